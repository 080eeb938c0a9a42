"""The verify job: run each selected task's own verifier in Docker on Ray, and join verdicts to the catalog.

Input is a finished scan (its `shard`/`row` point back at the blobs). The driver reads the selected
blobs once to group tasks by environment hash; each group is one item of the shared runner, so each
distinct environment is built exactly once per run, by one actor, and then serves all its tasks (and
later runs: images are kept, named by that hash). Per task: the oracle trial, then the null trial
(test.sh on the untouched environment, in a fresh container); `rewards.verdict` decides.

DEST gets `catalog/verify.parquet` (the scan's rows of the selected tasks plus verdict columns), so
`taskray export DEST OUT --where verdict=verified` and mix's TaskTrove task read it like a scan;
`results.jsonl` (rewards, durations, log tails per task), `plan.json`, and `summary.json` last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import time
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from taskray.core.console import Progress, say
from taskray.core.runner import finished_items, mark_complete, run_items
from taskray.core.storage import Store
from taskray.errors import BadInput
from taskray.scan.catalog import fetch_blobs, is_scan_output, require_finished_scan, select
from taskray.verify.images import DEFAULT_CAP_GB
from taskray.verify.rewards import VERDICTS, unreachable_host, verdict
from taskray.verify.task import TaskError, load_task

log = logging.getLogger(__name__)

INFRA_RETRIES = 2
# the columns verify adds to the scan's rows of the tasks it ran
VERDICT_COLUMNS = (
    "verdict",
    "verdict_detail",
    "oracle_reward",
    "null_reward",
    "image",
    "build_seconds",
    "trial_seconds",
    "base_rewrites",  # JSON: FROM image -> local image, so offline verdicts show it
    "attempts",
)


def _infra(err: Exception) -> bool:
    import docker
    import requests

    return isinstance(err, docker.errors.APIError | requests.exceptions.RequestException | ConnectionError)


class VerifyWorker:
    """The runner's worker: builds one environment, then runs the trials of all its tasks."""

    def __init__(
        self, network: str, null: bool, base_map: dict[str, str], offline: bool, max_image_gb: float
    ) -> None:
        from taskray.sandbox.daemon import docker_client, gc, new_session
        from taskray.verify.bases import ensure_base

        self.client = docker_client()
        gc(self.client)  # containers left by owners that died (a killed worker, a crashed run)
        if offline:
            ensure_base(self.client)  # this node's stand-in for the common bases
        self.session, self.network, self.null, self.base_map = new_session(), network, null, base_map
        self.cap_bytes = max_image_gb * 1e9

    def __call__(self, item: dict) -> dict:
        import ray

        from taskray.verify.images import image_for, in_use, prune

        rows, runnable = [], []
        node = ray.get_runtime_context().get_node_id()
        for ref, blob in _fetch_all(item["tasks"]):
            row = {"key": ref["key"], "image": None, "build_seconds": 0.0, "trial_seconds": 0.0}
            row.update(attempts=1, node=node, placed_on=item.get("node"))
            try:
                task = load_task(blob)
            except TaskError as e:
                rows.append({**row, "verdict": "unsupported", "verdict_detail": str(e)})
                continue
            if task.unsupported:
                rows.append({**row, "verdict": "unsupported", "verdict_detail": task.unsupported})
            else:
                runnable.append((row, task))
        if runnable:
            with in_use(image_for(runnable[0][1], self.base_map)):  # not pruned while its tasks run
                built, build_error = self._build(runnable[0][1])
                for i, (row, task) in enumerate(runnable):
                    if build_error is not None:
                        infra = build_error.startswith("infra: ")
                        verdict_ = "infra_error" if infra else "build_failed"
                        rows.append({**row, "verdict": verdict_, "verdict_detail": build_error[:1000]})
                        continue
                    row.update(image=built.image, base_rewrites=json.dumps(built.rewrites, sort_keys=True))
                    row["build_seconds"] = built.seconds if i == 0 else 0.0
                    rows.append({**row, **self._trials(task, built.image)})
            try:
                prune(self.client, self.cap_bytes)
            except Exception as e:  # the verdicts stand; pruning is tried again after the next environment
                log.warning("pruning environment images failed: %s", e)
        return {"rows": rows}

    def _build(self, task):
        """(the built image, None) or (None, why it did not build); infrastructure failures are retried."""
        from taskray.verify.images import BuildFailed, build

        for attempt in range(1, INFRA_RETRIES + 2):
            try:
                return build(self.client, task, self.base_map), None
            except BuildFailed as e:
                host = _unreachable(str(e))
                return None, (f"needs {host}, which this machine cannot reach: {e}" if host else str(e))
            except Exception as e:
                if not _infra(e) or attempt > INFRA_RETRIES:
                    return None, f"infra: {e}"
                time.sleep(2**attempt)  # the daemon may be restarting
        raise AssertionError("unreachable")

    def _trials(self, task, image: str) -> dict:
        from taskray.verify.trial import run_trial

        results, attempts, seconds = {}, 1, 0.0
        for name, wanted in (("oracle", bool(task.solution)), ("null", self.null)):
            if not wanted:
                continue
            for attempt in range(1, INFRA_RETRIES + 2):
                attempts = max(attempts, attempt)
                try:
                    res = run_trial(self.client, task, image, name == "oracle", self.network, self.session)
                    results[name] = res
                    seconds += res.seconds
                    break
                except Exception as e:
                    if not _infra(e) or attempt > INFRA_RETRIES:
                        detail = f"{name} trial, {attempt} attempts: {type(e).__name__}: {e}"[:1000]
                        return {
                            "verdict": "infra_error",
                            "verdict_detail": detail,
                            "trial_seconds": seconds,
                            "attempts": attempts,
                        }
        oracle, null = results.get("oracle"), results.get("null")
        v, why = verdict(oracle.trial if oracle else None, null.trial if null else None)
        host = unreachable_host(oracle.solve_tail) if v == "oracle_failed" and oracle else None
        if host:  # the oracle could not run here: no verdict on the task, and the row says why
            v, why = "unsupported", f"the oracle needs {host}, which this machine cannot reach ({why})"
        return {
            "verdict": v,
            "verdict_detail": why,
            "oracle_reward": oracle.trial.rewards.score if oracle else None,
            "null_reward": null.trial.rewards.score if null else None,
            "oracle_rewards": json.dumps(oracle.trial.rewards.values) if oracle else None,
            "null_rewards": json.dumps(null.trial.rewards.values) if null else None,
            "oracle_log_tail": oracle.log_tail if oracle else None,
            "null_log_tail": null.log_tail if null else None,
            "trial_seconds": seconds,
            "attempts": attempts,
        }


def _unreachable(build_error: str) -> str | None:
    """A host the failed build step could not reach: named in its output, or a URL in the failing
    command whose name does not even resolve from here."""
    host = unreachable_host(build_error)
    if host:
        return host
    for name in dict.fromkeys(re.findall(r"https?://([\w.-]+)", build_error)):
        try:
            socket.getaddrinfo(name, 443)
        except OSError:
            return name
    return None


def _fetch_all(refs: list[dict]) -> list[tuple[dict, bytes]]:
    """Each task's blob, read shard by shard."""
    by_shard = defaultdict(list)
    for ref in refs:
        by_shard[ref["shard"]].append(ref)
    return [(r, blob) for shard, rs in by_shard.items() for r, (_, blob) in zip(rs, _fetch(shard, rs))]


def _fetch(shard: str, refs: list[dict]) -> list[tuple[str, bytes]]:
    blobs = fetch_blobs(shard, [r["row"] for r in refs], {r["row"]: r["blob_sha256"] for r in refs})
    return [blobs[r["row"]] for r in refs]


def verify(
    scan_dest: str,
    out: str,
    where: list[str] = ("has_verifier",),
    source_filter: str | None = None,
    limit: int | None = None,
    null: bool = True,
    network: str = "none",
    base_map: dict[str, str] | None = None,
    workers: int | None = None,
    num_cpus: int | None = None,
    offline: bool = False,
    max_image_gb: float = DEFAULT_CAP_GB,
) -> dict:
    """Verify the selected tasks of a finished scan into OUT; returns the summary (also OUT/summary.json).

    `offline` maps the common base images to a local stand-in (taskray.verify.bases), built if missing;
    `base_map` entries add to or override it. Environment images are kept for later runs, the least
    recently used pruned beyond `max_image_gb` per machine (taskray.verify.images)."""
    from taskray.core.raycluster import init_ray

    if network not in ("none", "public"):
        raise BadInput(f"--network {network!r}: expected none or public")
    if not is_scan_output(scan_dest):
        raise BadInput(f"{scan_dest}: not a scan's output (no plan.json); expected `taskray scan --out` DEST")
    require_finished_scan(scan_dest)
    store = Store(out)
    store.check_writable("--out")
    table = select(scan_dest, list(where), source_filter)
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        say("verify", f"warning: no task matches {' and '.join(where) or 'the selection'} in {scan_dest}")
    rows = table.to_pylist()
    for r in rows:
        r["key"] = f"{r['source']}/{r['shard']}#{r['row']}"
    from taskray.verify.bases import default_map

    base_map = {**(default_map() if offline else {}), **(base_map or {})}
    groups = _group_by_environment(rows, base_map)
    plan = {
        "scan": scan_dest,
        "where": list(where),
        "source_filter": source_filter,
        "limit": limit,
        "null": null,
        "network": network,
        "base_map": base_map,
        "tasks": sorted((r["key"], r["blob_sha256"]) for r in rows),
    }
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    # an environment whose tasks met an infrastructure failure is run again: that was no verdict
    done = finished_items(
        store, plan_id, redo=lambda r: any(row["verdict"] == "infra_error" for row in r["rows"])
    )
    todo = {k: v for k, v in groups.items() if k not in done}
    say(
        "verify", f"{len(rows):,} tasks in {len(groups)} environments; {len(groups) - len(todo)} already done"
    )
    if todo:
        store.delete("summary.json")
        store.write_bytes("plan.json", json.dumps(plan, indent=1).encode())
        init_ray(num_cpus)
        progress, finished, tally = Progress("verify", len(rows)), 0, Counter()
        args = {
            "network": network,
            "null": null,
            "base_map": base_map,
            "offline": offline,
            "max_image_gb": max_image_gb,
        }
        placement = _placement(todo)  # nodes that hold an environment's image get its tasks
        if placement:
            say("verify", f"{len(placement)} environments go to nodes that already hold their images")
        for key, result in run_items(
            todo, VerifyWorker, store, plan_id, args, actors=workers, placement=placement
        ):
            done[key] = result
            finished += len(result["rows"])
            tally.update(r["verdict"] for r in result["rows"])
            counts = ", ".join(f"{v} {tally[v]}" for v in VERDICTS if tally[v])
            progress.update(finished, f"{finished}/{len(rows)} tasks | {counts}")
    return _write_outputs(store, rows, done, plan)


def _group_by_environment(rows: list[dict], base_map: dict[str, str]) -> dict[str, dict]:
    """Tasks by environment hash (one build each), with the image each group runs on; a task whose blob
    is not a task is its own group."""
    from taskray.verify.images import image_for

    groups: dict[str, dict] = {}
    for r, blob in _fetch_all(rows):
        try:
            task = load_task(blob)
            env, image = task.environment_hash, image_for(task, base_map)
        except TaskError:
            env, image = "none-" + r["blob_sha256"][:16], None
        ref = {k: r[k] for k in ("key", "source", "path", "shard", "row", "blob_sha256")}
        groups.setdefault(env[:24], {"environment": env, "image": image, "tasks": []})["tasks"].append(ref)
    return groups


def _placement(groups: dict[str, dict]) -> dict[str, str]:
    """On a cluster, each environment whose image some node already holds goes to such a node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from taskray.verify.images import images_here, place

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return {}
    tags = sorted({g["image"] for g in groups.values() if g["image"]})
    ask = ray.remote(num_cpus=0)(images_here)
    asked = {
        node: ask.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(tags)
        for node in nodes
    }
    holdings = {}
    for node, ref in asked.items():
        try:
            holdings[node] = set(ray.get(ref, timeout=120))
        except Exception:  # a node that cannot say (no Docker, gone): it holds nothing we know of
            holdings[node] = set()
    placed = place({k: g["image"] for k, g in groups.items()}, holdings)
    for key, node in placed.items():
        groups[key]["node"] = node
    return placed


def _write_outputs(store: Store, rows: list[dict], done: dict, plan: dict) -> dict:
    results = {r["key"]: r for res in done.values() for r in res["rows"]}
    joined = []
    for r in rows:
        v = results[r["key"]]
        joined.append({**{k: r[k] for k in r if k != "key"}, **{c: v.get(c) for c in VERDICT_COLUMNS}})
    table = pa.Table.from_pylist(joined)
    store.put_staged("catalog/verify.parquet", lambda local: pq.write_table(table, local, compression="zstd"))
    store.write_bytes(
        "results.jsonl", "".join(json.dumps(results[r["key"]], sort_keys=True) + "\n" for r in rows).encode()
    )
    per_source: dict[str, Counter] = defaultdict(Counter)
    for r in joined:
        per_source[r["source"]][r["verdict"]] += 1
    summary = {
        "tasks": len(joined),
        "verdicts": dict(Counter(r["verdict"] for r in joined)),
        "sources": {s: dict(c) for s, c in sorted(per_source.items())},
        "build_seconds": round(sum(r["build_seconds"] or 0 for r in joined), 3),
        "trial_seconds": round(sum(r["trial_seconds"] or 0 for r in joined), 3),
        "plan": {k: plan[k] for k in plan if k != "tasks"},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    mark_complete(store, "summary.json", summary)
    return summary
