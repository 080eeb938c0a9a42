"""Verifier detection: each family, decoys, the real Harbor tasks, and the article's rule as a floor."""

from __future__ import annotations

import gzip
import io
import random
import re
import tarfile
from pathlib import Path

import pytest

from taskray.scan.blob import parse_blob
from taskray.scan.detect import _PYTEST, _REWARD, ARTICLE_JSON_KEYS, article_name_hits, detect
from taskray.scan.synth import EXPECTED_KIND, make_blob


def pack_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def tar_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content.encode())
            tar.addfile(info, io.BytesIO(content.encode()))
    return gzip.compress(buf.getvalue())


HARBOR_BASE = {
    "instruction.md": "Make /app/out.txt say hi.\n",
    "task.toml": "[verifier]\ntimeout_sec = 60.0\n[agent]\ntimeout_sec = 600.0\n"
    '[environment]\ncpus = 2\nmemory = "4G"\nallow_internet = false\ndocker_image = "img:1"\n',
    "environment/Dockerfile": "FROM ubuntu:24.04\n",
}


@pytest.mark.parametrize("family", sorted(EXPECTED_KIND))
def test_each_synthetic_family(family):
    rng = random.Random(1)
    for n in range(3):
        parsed = parse_blob(make_blob(family, n, rng))
        det = detect(parsed)
        expected = EXPECTED_KIND[family]
        if expected == "error":
            assert parsed.error and not det.has_verifier
        elif expected is None:
            assert parsed.error is None and not det.has_verifier and det.verifier_kind == "none", det
        else:
            assert parsed.error is None
            assert (det.has_verifier, det.verifier_kind) == (True, expected), det.verifier_signals


def test_all_nine_real_harbor_tasks(shared_data):
    folders = sorted(p for p in (shared_data / "harbor-tasks").iterdir() if p.is_dir())
    assert len(folders) == 9
    for folder in folders:
        det = detect(parse_blob(pack_folder(folder)))
        assert det.has_verifier and det.verifier_kind == "pytest", folder.name
        assert det.has_oracle and det.harbor_complete, folder.name
        assert "tests/test.sh:writes-reward" in det.verifier_signals
        assert det.verifier_timeout_sec in (120.0, 900.0)


def test_plain_harbor_test_sh_is_a_verifier_the_article_missed():
    det = detect(
        parse_blob(
            tar_of(
                {
                    **HARBOR_BASE,
                    "tests/test.sh": "test -f /app/out.txt && echo 1 > "
                    "/logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n",
                }
            )
        )
    )
    assert (det.has_verifier, det.verifier_kind, det.article_verified) == (True, "harbor_tests", False)
    assert det.harbor_complete and not det.has_oracle


def test_task_toml_fields():
    det = detect(parse_blob(tar_of({**HARBOR_BASE, "tests/test.sh": "echo 1 > /logs/verifier/reward.txt\n"})))
    assert det.verifier_timeout_sec == 60.0 and det.agent_timeout_sec == 600.0
    assert (det.cpus, det.memory_mb, det.allow_internet, det.docker_image) == (2.0, 4096, False, "img:1")


def test_task_toml_and_test_sh_are_remembered_by_their_bytes_never_by_their_name():
    """task.toml and tests/test.sh are read once per content: tasks with other contents, interleaved,
    each get their own fields and signals, as often as they come."""
    reward_only = {**HARBOR_BASE, "tests/test.sh": "echo 1 > /logs/verifier/reward.txt\n"}
    pytest_only = {
        **HARBOR_BASE,
        "task.toml": "[verifier]\ntimeout_sec = 5.0\n[environment]\nmemory_mb = 512\n",
        "tests/test.sh": "pytest /tests/test_outputs.py\n",  # runs pytest, writes no reward file
        "tests/test_outputs.py": "def test_x(): pass\n",
    }
    broken = {**reward_only, "task.toml": "[verifier\n"}
    for _ in range(3):
        a, b, c = (detect(parse_blob(tar_of(files))) for files in (reward_only, pytest_only, broken))
        assert (a.verifier_timeout_sec, a.memory_mb, a.verifier_kind) == (60.0, 4096, "harbor_tests")
        assert (b.verifier_timeout_sec, b.memory_mb, b.verifier_kind) == (5.0, 512, "pytest")
        assert (
            "tests/test.sh:runs-pytest" in b.verifier_signals
            and "tests/test.sh:no-reward" in b.verifier_signals
        )
        assert "task.toml:unparseable" in c.verifier_signals and c.verifier_timeout_sec is None


def test_legacy_task_yaml_timeouts_are_the_top_level_keys_only():
    task_yaml = (
        "descriptions:\n  - key: base\n    description: |-\n      max_test_timeout_sec: 999\n"
        "max_agent_timeout_sec: 180.0  # three minutes\n'max_test_timeout_sec': \"30\"\n"
    )
    det = detect(parse_blob(tar_of({"task.yaml": task_yaml, "run-tests.sh": "pytest\n", "tests/a.py": ""})))
    assert det.verifier_kind == "legacy_tb"
    assert (det.verifier_timeout_sec, det.agent_timeout_sec) == (30.0, 180.0)


def test_legacy_task_yaml_with_a_byte_order_mark():
    task_yaml = "\ufeffmax_test_timeout_sec: 45\ninstruction: |-\n  Do it.\n"
    det = detect(parse_blob(tar_of({"task.yaml": task_yaml, "run-tests.sh": "pytest\n", "tests/a.py": ""})))
    assert det.verifier_timeout_sec == 45.0


@pytest.mark.parametrize(
    "config, article",
    [('{"tests": []}', True), ('{"FAIL_TO_PASS": ["a"]}', True), ('{"repo": "x"}', False), ("[1]", False)],
)
def test_article_rule_on_tests_config_json_is_its_top_level_keys(config, article):
    det = detect(parse_blob(tar_of({**HARBOR_BASE, "tests/config.json": config})))
    assert det.article_verified is article


def test_json_nested_thousands_deep_costs_a_row_not_a_crash():
    deep = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in parse_blob(deep.encode()).error
    det = detect(parse_blob(tar_of({**HARBOR_BASE, "tests/config.json": deep, "meta.json": deep})))
    assert "tests/config.json:unparseable" in det.verifier_signals and not det.has_verifier


def test_decoys_do_not_verify_but_are_recorded():
    det = detect(
        parse_blob(
            tar_of(
                {
                    **HARBOR_BASE,
                    "evaluation_notes.md": "we will eval later",
                    "README.md": "the verifier and grader come later",
                    "src/retrieval.py": "x = 1",
                    "data/scores.csv": "1",
                }
            )
        )
    )
    assert not det.has_verifier and det.verifier_kind == "none"
    assert det.article_verified  # the article's rule falls for it
    assert "evaluation_notes.md:name" in det.verifier_signals


def test_test_sh_without_reward_is_not_enough():
    det = detect(parse_blob(tar_of({**HARBOR_BASE, "tests/test.sh": "exit 0\n"})))
    assert not det.has_verifier and "tests/test.sh:no-reward" in det.verifier_signals


def test_named_verifier_script_counts_as_evidence():
    det = detect(parse_blob(tar_of({**HARBOR_BASE, "tests/grader.py": "print(1)\n"})))
    assert det.has_verifier and det.verifier_kind == "python_verifier"
    assert "tests/grader.py:verifier-name" in det.verifier_signals


@pytest.mark.parametrize("key", ["FAIL_TO_PASS", "fail_to_pass"])
def test_swe_config_either_case(key):
    files = {
        **HARBOR_BASE,
        "tests/test.sh": "pytest; echo 1 > /logs/verifier/reward.txt\n",
        "tests/config.json": f'{{"{key}": ["a::b"]}}',
    }
    det = detect(parse_blob(tar_of(files)))
    assert det.verifier_kind == "swe_patch" and "tests/config.json:FAIL_TO_PASS" in det.verifier_signals


def test_json_rows_need_a_non_empty_test_field():
    assert detect(parse_blob(b'{"prompt": "p", "tests": ["assert f()"]}')).verifier_kind == "json_tests"
    empty = detect(parse_blob(b'{"prompt": "p", "tests": []}'))
    assert not empty.has_verifier and empty.article_verified  # the article counts an empty key
    assert "json:key-tests" in empty.verifier_signals


def test_superset_of_article_on_a_corpus():
    """Every task the article flags that has real evidence (ground truth: a verifier family), we flag too;
    and every signal the article would use appears in our signals."""
    rng = random.Random(3)
    flagged_by_article = 0
    for i in range(600):
        family = rng.choice(sorted(EXPECTED_KIND))
        parsed = parse_blob(make_blob(family, i, rng))
        det = detect(parsed)
        truly_verified = EXPECTED_KIND[family] not in (None, "error")
        if det.article_verified:
            flagged_by_article += 1
            if truly_verified:
                assert det.has_verifier, (family, det.verifier_signals)
        if det.has_verifier:
            assert truly_verified, (family, det.verifier_signals)
        for name in article_name_hits(list(parsed.members)):
            assert f"{name}:name" in det.verifier_signals
        if parsed.format == "json" and isinstance(parsed.data, dict):
            for key in ARTICLE_JSON_KEYS:
                if key in parsed.data:
                    assert f"json:key-{key}" in det.verifier_signals
    assert flagged_by_article > 50


@pytest.mark.parametrize(
    "toml",
    [
        'verifier = "x"\nenvironment = 3\nagent = []\n',
        '[environment]\nmemory_mb = "lots"\nallow_internet = "yes"\ndocker_image = 5\ncpus = true\n',
        '[environment]\nmemory = "1.2.3G"\n',
        "[environment]\nmemory_mb = 1e300\n",
        "[verifier\ntimeout_sec = 1\n",
    ],
)
def test_malformed_task_toml_leaves_fields_empty_never_crashes(toml):
    from taskray.scan.catalog import CATALOG_SCHEMA, scan_blobs

    blob = tar_of({**HARBOR_BASE, "task.toml": toml, "tests/test.sh": "echo 1 > /logs/verifier/reward.txt\n"})
    det = detect(parse_blob(blob))
    assert det.has_verifier and det.verifier_kind == "harbor_tests"
    assert det.memory_mb is None and det.docker_image is None and det.allow_internet is None
    # and the catalog row it becomes fits the catalog's types
    import pyarrow as pa

    table = pa.table(scan_blobs("s", "x", 0, ["p"], [blob]), schema=CATALOG_SCHEMA)
    assert table.num_rows == 1 and table["error"][0].as_py() is None


def test_the_literal_first_patterns_match_what_the_plain_ones_do():
    """The reward-file and pytest patterns are written literal first, for speed; on 200k random scripts
    made of the pieces that matter (the literals, word and non-word characters, non-ASCII letters and
    digits) they find a match exactly when the plain patterns they replace do."""
    plain_reward = re.compile(r"/logs/verifier/reward\.(txt|json)|\breward\.(txt|json)\b")
    plain_pytest = re.compile(r"\bpytest\b")
    pieces = ["reward.txt", "reward.json", "/logs/verifier/", "reward", "pytest", "py", "txt", "json"]
    pieces += ["x", "_", "1", "é", "\u0663", " ", "/", ".", "-", "\n"]
    rng = random.Random(7)
    found = 0
    for _ in range(200_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert (_REWARD.search(text) is None) == (plain_reward.search(text) is None), text
        assert (_PYTEST.search(text) is None) == (plain_pytest.search(text) is None), text
        found += plain_reward.search(text) is not None
    assert found > 10_000  # the scripts do exercise the patterns
