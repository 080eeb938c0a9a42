"""The taskray sandbox worker: PID 1 of a warm container, running one untrusted program per job.

Protocol (host <-> runner, over the container's attached stdin/stdout): frames of a 4-byte big-endian
length and UTF-8 JSON. The runner says {"ready": ...} once, then answers each job frame with one result
frame; a frame holding a list of jobs gets one result frame per job, in order, until a job leaves the
container unfit for more, and {"id", "not_run": true} for the rest. It exits when stdin closes, so a
container whose owner died stops on its own.

A job is {"id", "sources": [str, ...], "nonce": hex, "timeout": s, "output_cap": bytes}. Each job runs in
a fresh child forked from this (already warm) interpreter, so per-job cost is milliseconds. The child
compiles every source separately (a string opened in the candidate cannot swallow the tests), runs them
in one namespace and, only if the last statement returned normally, writes the job's nonce to fd 3.

Threat model -- what the candidate can and cannot do:
- It runs as uid 10001 with no capabilities, no network, a read-only root, capped memory/pids/CPU and a
  small tmpfs; the host kills the container from outside if this runner ever stops answering.
- Verdict forgery: a pass is only the exact per-job nonce arriving on fd 3, checked by the *host*. Exit
  codes, stdout ("passed"), sys.exit(0)/os._exit(0)/SystemExit (caught by the harness's own trap, or
  the process ends before writing), closing stdout, signals, or killing the parent never produce it.
- The candidate cannot reach this runner: fds 0/1 (the host channel) are replaced in the child, and
  the runner is non-dumpable, so /proc/1/fd and /proc/1/mem are closed to it; as a namespace's init it
  ignores every signal sent from inside the container, so it cannot be killed to fake an infra error.
- Semantic forgery (a job with a "judge", as eval's are): the tests run in a namespace of their own with
  the builtins as they were before the candidate ran and the prompt's own helpers, and get the
  candidate's functions through wrappers that pass plain built-in data only, so an object whose == is
  always true or a rigged subclass fails. The builtins and the modules the tests use are snapshotted
  before the candidate runs and compared around every call of its functions and after the tests; any
  replacement fails the job, named ("replaced builtins.abs"), and so do threads, signal handlers, gc
  callbacks and trace hooks it leaves behind (code of its that could run while the tests do) and objects
  it plants in the tests' arguments. An audit hook refuses rewriting functions in place (`__code__`,
  defaults), a module's class, the collector's object lists and ctypes. See `judged`.
- Not defended: code that deliberately walks frames (from a traceback's tb_frame) to the harness's
  locals can forge a pass or reach into the tests' namespace. That needs knowledge of this harness and
  still gains nothing outside the container.
- Leftovers: after each job the whole process group is SIGKILLed, then every other process (kill -1);
  processes that escaped the group, files outside the job folder, a timeout or an OOM are reported as
  "tainted" and the host replaces the container.
"""

import ctypes
import functools
import gc
import json
import operator
import os
import re
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback
import types

WORK = "/work"
JOB_DIR = "/work/job"
SCRATCH = ("/work", "/tmp", "/dev/shm")  # the only writable places; must be empty between jobs
VERDICT_FD = 3
PR_SET_DUMPABLE = 4

# Modules HumanEval-style programs import; loaded once here so every forked child gets them for free.
WARM_MODULES = (
    "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "typing", "string",
    "random", "statistics", "hashlib", "fractions", "decimal", "operator", "copy", "datetime", "traceback",
)


# -- framing -------------------------------------------------------------------------------------------
def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd=0):
    head = read_exact(fd, 4)
    if head is None:
        return None
    body = read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def write_frame(obj, fd=1):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# -- the child: trusted harness around untrusted sources -------------------------------------------------
def child(job, out_w, err_w, verdict_w, prepared):
    """Never returns. Everything before exec() is the harness; nothing after it trusts the namespace."""
    os.setsid()  # own session and process group: killed whole at the end
    try:  # make the child, not the runner, the OOM killer's first choice (raising is unprivileged)
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
    except OSError:
        pass
    devnull = os.open("/dev/null", os.O_RDONLY)
    # Replacing fds 0/1/2 cuts the child off the host channel; everything else is closed.
    for src, dst in ((devnull, 0), (out_w, 1), (err_w, 2), (verdict_w, VERDICT_FD)):
        os.dup2(src, dst)
    # Bounded by the fd limit: without close_range (seccomp) closerange is one syscall per number.
    os.closerange(VERDICT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.chdir(JOB_DIR)
    sys.stdin, sys.stdout, sys.stderr = prepared["streams"]  # on fds 0, 1 and 2, which are the job's now
    nonce, write, _exit = job["nonce"].encode(), os.write, os._exit  # bound before candidate code runs
    try:  # the trusted parts (tests, the prompt's helpers) come compiled by the runner
        ready = job.get("compiled", {})
        codes = [ready.get(i) or compile(s, f"<source {i}>", "exec") for i, s in enumerate(job["sources"])]
    except Exception:
        traceback.print_exc()
        write(VERDICT_FD, b"compile-error")
        _exit(1)
    judge = job.get("judge")
    del job
    if judge is not None:
        judged(codes, judge, nonce, write, _exit, prepared)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for code in codes:
            exec(code, namespace)
    except BaseException:  # SystemExit and KeyboardInterrupt too: leaving early is failing
        try:
            traceback.print_exc()
        except BaseException:
            pass
        _exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    write(VERDICT_FD, nonce)
    _exit(0)


# -- trusted judgement: a pass needs honest values and untouched modules ---------------------------------
# The candidate and the tests are separate: the tests run in a namespace of their own, with the builtins
# as they were before the candidate ran and the prompt's own helpers, and see the candidate's functions
# only through wrappers that let plain built-in data through and nothing else (an object whose == is
# always true, a str subclass, a rigged number). Modules the tests rely on are snapshotted before the
# candidate runs and compared around every call of its functions and after the tests: a replaced builtin
# or library function is a failure, named. Everything the harness calls below was bound before candidate
# code ran.
PLAIN = (bool, int, float, complex, str, bytes, type(None))
CONTAINERS = (list, tuple, dict, set, frozenset)
MISSING = object()
HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not by C
BASE_EXCEPTION = 1 << 30  # Py_TPFLAGS_BASE_EXC_SUBCLASS: set by C on every exception class
# Attributes that tests may honestly swap for a while (capturing output): not counted as tampering.
SWAPPABLE = {"sys": ("stdin", "stdout", "stderr")}
IMPORTED = re.compile(r"^[ \t]*(?:import|from)[ \t]+([\w.]+)", re.MULTILINE)


class Rigged(BaseException):
    """A candidate function handed the tests something other than plain data (not an Exception, so a
    test's `except Exception` cannot swallow it)."""


def plain_data_check(allowed):
    """A function telling why a value is not plain built-in data: None when it is, else (why, the
    offending type or None). Besides the built-in types, the standard library's own dict subclasses and
    exact numbers pass, as honest solutions return them and tests accept them (a Counter for a
    histogram): their code is the library's, and the tampering check covers the library. Types are
    compared by address: a metaclass can make a class equal to, and hash like, `int`."""
    import collections
    import decimal
    import fractions

    # Keys are object.__hash__ of the type (its address, which no metaclass can change), not the type:
    # and not id(), which is an audited event (see `judged`), called for every value checked.
    _id = object.__hash__
    scalars = frozenset(map(_id, (*PLAIN, decimal.Decimal, *allowed)))
    containers = frozenset(map(_id, (*CONTAINERS, collections.deque)))
    dicts = (dict, collections.Counter, collections.OrderedDict, collections.defaultdict)
    mappings = frozenset(map(_id, dicts))
    factories = frozenset(map(_id, (None, *PLAIN, *CONTAINERS)))
    _type, _dict_items, defaultdict = type, dict.items, collections.defaultdict
    fraction, numerator, denominator = fractions.Fraction, *(
        fractions.Fraction.__dict__[slot].__get__ for slot in ("_numerator", "_denominator")
    )
    qualname = type.__dict__["__qualname__"].__get__  # a metaclass cannot fake what this reads

    def why_not(value, depth=0, seen=None):
        t = _type(value)
        if _id(t) in scalars:
            return None
        if t is fraction:  # its parts are plain attributes anyone can set
            if _type(numerator(value)) is int and _type(denominator(value)) is int:
                return None
            return ("a Fraction made of something other than integers", None)
        if _id(t) not in containers and _id(t) not in mappings:
            return (f"an object of type {qualname(t)}", t)
        if t is defaultdict and _id(value.default_factory) not in factories:
            return ("a defaultdict whose missing keys come from the candidate's own code", None)
        if depth > 200:
            return ("data nested more than 200 deep", None)
        seen = set() if seen is None else seen
        if _id(value) in seen:
            return None
        seen.add(_id(value))
        parts = (x for kv in _dict_items(value) for x in kv) if _id(t) in mappings else value
        for part in parts:
            problem = why_not(part, depth + 1, seen)
            if problem is not None:
                return problem
        return None

    return why_not


def snapshot(names):
    """{module name: (module, its attributes, its classes' attributes, its instances' attributes)},
    taken before the candidate runs. Instances are objects with attributes of their own that a module
    keeps (random's `_inst`, whose methods are the module's functions). Tuples all the way down: the
    candidate can reach this module's globals, but not change a tuple."""
    taken = {}
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        swappable = SWAPPABLE.get(name, ())
        attrs = tuple((a, obj) for a, obj in vars(module).items() if a not in swappable)
        classes = tuple(  # only classes written in Python can be changed; built-in types refuse it
            (attr, obj, tuple(vars(obj).items()))
            for attr, obj in attrs
            if isinstance(obj, type) and obj.__flags__ & HEAP_TYPE and obj.__module__ == name
        )
        instances = tuple((attr, obj, tuple(vars(obj).items())) for attr, obj in attrs if _instance(obj))
        taken[name] = (module, attrs, classes, instances)
    return taken


def _instance(obj):
    """Whether a module's attribute is an object with attributes of its own (not a class, module or
    function, which are watched otherwise)."""
    if isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        return False
    try:
        return type(object.__getattribute__(obj, "__dict__")) is dict
    except Exception:  # no __dict__ (slots, C objects)
        return False


def tampering(taken, modules, pristine, missing=MISSING, _vars=vars, _set=set, _call=callable, _dict=dict):
    """What the candidate replaced, in words. (Builtins are bound at definition: the candidate may have
    replaced them with ones that hide its changes. Jobs use a copy of this function that it cannot
    reach, made by `prepare`.)"""
    found = []
    for name, (module, attrs, classes, instances) in taken.items():
        if modules.get(name) is not module:
            found.append(f"replaced module {name}")
            continue
        now = _vars(module)
        found += [f"replaced {name}.{a}" for a, obj in attrs if now.get(a, missing) is not obj]
        if name == "builtins":  # and the tests' copy of them
            known = _set(a for a, _ in attrs)
            changed = [a for a, obj in attrs if pristine.get(a, missing) is not obj]
            found += [f"replaced the tests' builtins.{a}" for a in changed]
            found += [f"added the tests' builtins.{a}" for a in _set(pristine) - known]
        for cls_name, cls, cls_attrs in classes:
            cls_now = _vars(cls)
            changed = [a for a, obj in cls_attrs if cls_now.get(a, missing) is not obj]
            found += [f"replaced {name}.{cls_name}.{a}" for a in changed]
            found += [f"added {name}.{cls_name}.{a}" for a in _set(cls_now) - _set(a for a, _ in cls_attrs)]
        for inst_name, inst, inst_attrs in instances:  # their data changes as they are used; methods do not
            was = _dict(inst_attrs)
            changed = [a for a, obj in _vars(inst).items() if _call(obj) and was.get(a, missing) is not obj]
            found += [f"replaced {name}.{inst_name}.{a}" for a in changed]
    return found


# Fast tamper check. Comparing every snapshotted attribute touches thousands of objects, and touching an
# object in a forked child writes its reference count, which copies its memory page: most of a job's
# cost. A dict's version tag (PEP 509) changes with every change to the dict, and reading it touches
# nothing; so the tags of the watched dicts are compared first, and the attributes only when a tag moved.
def _tag_offset():
    """Where a dict keeps its version tag, checked on a probe; None when this interpreter keeps none
    there (then every check compares the attributes)."""
    if sys.implementation.name != "cpython":
        return None
    offset = 3 * ctypes.sizeof(ctypes.c_ssize_t)  # after the reference count, the type and the size
    probe = {}
    tag = ctypes.c_uint64.from_address(id(probe) + offset)
    tags = [tag.value]
    for change in (lambda: probe.update(a=1), lambda: probe.update(a=2), lambda: probe.pop("a")):
        change()
        tags.append(tag.value)
    return offset if len(set(tags)) == len(tags) else None


TAG_OFFSET = _tag_offset()


def tag_reader(dicts):
    """A function returning the version tags of `dicts` now, as a tuple; None without tags. It reads
    them all in one C call (an item getter over a read-only view of the memory that holds them):
    a ctypes getter per dict cost more than the rest of a check, around every call of the candidate's
    functions."""
    addresses = [id(d) + TAG_OFFSET for d in dicts] if TAG_OFFSET is not None else None
    if not addresses:
        return None if addresses is None else tuple
    low = min(addresses)
    if any((a - low) % 8 for a in addresses):
        return None
    span = (ctypes.c_uint64 * ((max(addresses) - low) // 8 + 1)).from_address(low)
    words = memoryview(span).cast("B").cast("Q").toreadonly()
    pick = operator.itemgetter(*[(a - low) // 8 for a in addresses])
    if len(addresses) == 1:
        return lambda: (pick(words),)
    return lambda: pick(words)


def fingerprint(taken, dicts=()):
    """(module names, the modules, a reader of the version tags of their dicts, their classes' and
    instances' dicts and `dicts`, the tags now)."""
    found = [vars(module) for module, _, _, _ in taken.values()] + list(dicts)
    for _, _, classes, instances in taken.values():
        found += [gc.get_referents(vars(cls))[0] for _, cls, _ in classes]  # the dict under the proxy
        found += [vars(inst) for _, inst, _ in instances]
    read = tag_reader(found)
    modules = tuple(module for module, _, _, _ in taken.values())
    return tuple(taken), modules, read, read() if read else ()


def exception_classes(taken):
    """Addresses of the exception classes the snapshotted modules define (statistics.StatisticsError):
    library code, watched like the rest, that tests may catch by name."""
    classes = (cls for entry in taken.values() for _, cls, _ in entry[2])
    return frozenset(object.__hash__(cls) for cls in classes if issubclass(cls, BaseException))


def classed_in(taken):
    """Addresses of the snapshotted modules, and of those and the instances they hold (whose class a
    candidate may not replace)."""
    modules = frozenset(object.__hash__(entry[0]) for entry in taken.values())
    return modules, modules | {object.__hash__(inst) for entry in taken.values() for _, inst, _ in entry[3]}


def resolve_types(names):
    """Types by 'module:qualname', as the problem's reference solution returns them."""
    import importlib

    found = []
    for spec in names:
        module, _, qual = spec.partition(":")
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        found.append(obj)
    return found


def prepare():
    """What every job needs, made once before the first (forking then gives it to each for free) and
    kept out of the module's globals, which the candidate can reach (`import __main__`)."""
    import builtins

    for name in WARM_MODULES:
        __import__(name)
    # The first compile() in a process builds the parser's AST classes (over a hundred); every job's child
    # compiles the candidate's source, so this one pays for that once, for all of them.
    compile("", "<warm>", "exec")
    baseline = snapshot(["builtins", *WARM_MODULES])
    pristine = dict(vars(builtins))  # the tests' builtins
    catchable = tuple(n for n in signal.valid_signals() if n not in (signal.SIGKILL, signal.SIGSTOP))
    return {
        "baseline": baseline,
        "pristine": pristine,
        "fingerprint": fingerprint(baseline, [pristine]),
        # addresses of what the baseline holds, once: walking it in a job would write to every page
        # it lives on (reference counts), and each write copies the page in the forked child
        "classed": classed_in(baseline),
        "library_exceptions": exception_classes(baseline),
        "catchable": catchable,
        "why_not": plain_data_check(()),
        # a copy of the checker the candidate cannot reach (it can rewrite `tampering.__code__`)
        "tampering": types.FunctionType(
            tampering.__code__, {"__builtins__": builtins}, "tampering", tampering.__defaults__
        ),
        # the job's stdin, stdout and stderr: fds 0, 1 and 2 are the host channel here, the job's there
        "oom_counter": oom_counter(),
        "streams": (
            open(0, closefd=False),
            open(1, "w", buffering=1, closefd=False),
            open(2, "w", buffering=1, closefd=False),
        ),
    }


def judged(codes, judge, nonce, write, _exit, prepared):
    """Run the helpers the prompt defines (codes[2], if any) in the tests' namespace, then the candidate
    (codes[0]), then the tests (codes[1]) on its entry point; never returns.

    The candidate can reach this module (`import __main__`) and every builtin, so everything used after
    it ran is bound here first, as a local of this call."""
    import _signal
    import _thread
    import builtins
    import functools
    import gc
    import operator

    probe = judge.get("probe", False)  # a reference solution: record what it returns, fail nothing
    imported = judge["imported"]
    for name in imported:  # loaded before the candidate runs, so they are snapshotted untouched
        try:
            __import__(name)
        except BaseException:
            pass
    baseline, pristine = prepared["baseline"], prepared["pristine"]  # tests' builtins: watched too
    extra = snapshot(dict.fromkeys(n for n in imported if n not in baseline and n != "__main__"))
    taken = {**baseline, **extra}
    names, mods, read, versions = prepared["fingerprint"]
    if extra:  # modules only these tests import: watched too, their tags read after the baseline's
        more_names, more_mods, read_more, more_versions = fingerprint(extra)
        names, mods, versions = names + more_names, mods + more_mods, versions + more_versions
        read_baseline = read
        read = read and read_more and (lambda: read_baseline() + read_more())
    allowed = judge.get("allowed_types")
    why_not = plain_data_check(resolve_types(allowed)) if allowed else prepared["why_not"]
    entry_point = judge["entry_point"]
    _tampering, _rigged, _modules = prepared["tampering"], Rigged, sys.modules
    _dict, _list, _sorted, _len, _hash = dict, list, sorted, len, object.__hash__
    _isinstance, _callable, _print, _type, _dumps, _zip = isinstance, callable, print, type, json.dumps, zip
    _functions = (types.FunctionType, types.BuiltinFunctionType, functools._lru_cache_wrapper)
    _join, _flush, _flush_err, _print_exc = "; ".join, sys.stdout.flush, sys.stderr.flush, traceback.print_exc
    _exec, _gettrace, _getprofile, _fast = exec, sys.gettrace, sys.getprofile, read is not None
    _map, _is_not = map, operator.is_not
    _str, _module_type, _getattr = str, types.ModuleType, getattr
    _refusal, _not_here = RuntimeError, ValueError
    taken_modules, classed = prepared["classed"]
    library = prepared["library_exceptions"]
    if extra:
        more_modules, more_classed = classed_in(extra)
        taken_modules, classed = taken_modules | more_modules, classed | more_classed
        library = library | exception_classes(extra)
    # Code of the candidate's that could run while the tests do, between the checks: its threads, its
    # signal handlers (a timer's), finalizers of its objects run by the garbage collector and the
    # collector's callbacks could change a list it returned after the check passed it. The collector is
    # off for the job (a job is short; the memory limit stands).
    _threads, _getsignal, _any = _thread._count, _signal.getsignal, any
    _gc_on, _gc_callbacks = gc.isenabled, gc.callbacks
    catchable = prepared["catchable"]
    handlers = tuple(map(_getsignal, catchable))  # after the tests' imports: one may set a handler
    qualname = type.__dict__["__qualname__"].__get__
    # read as the C getters see them: a metaclass or a subclass can fake the attributes
    _mro, _flags = type.__dict__["__mro__"].__get__, type.__dict__["__flags__"].__get__
    _args, _exception_type = BaseException.__dict__["args"].__get__, Exception
    violations, returned = [], set()

    # An audit hook (PEP 578; it cannot be removed) refuses what rewrites code in place, where no
    # snapshot sees it (a function's __code__ or defaults, a module's class), and the ways into the
    # interpreter's own memory (the collector's object lists, ctypes); frames are refused to callers
    # that ask sys._getframe, with the ValueError the standard library expects where there are none.
    refused = {
        "gc.get_objects": "listed the interpreter's objects",
        "gc.get_referrers": "looked up an object's referrers",
        "gc.get_referents": "looked up an object's referents",
        "sys.addaudithook": "added an audit hook",
    }
    rewrites = ("__code__", "__defaults__", "__kwdefaults__")

    def guard(event, args):
        if event in refused or event[:7] == "ctypes.":
            violations.append(refused.get(event) or f"used ctypes ({event})")
            raise _refusal(f"{event} is not allowed here")
        if event == "object.__setattr__" or event == "object.__delattr__":
            target, attr = args[0], args[1]
            if attr in rewrites or (attr == "__class__" and _hash(target) in classed):
                what = _getattr(target, "__qualname__", None) or _getattr(target, "__name__", "?")
                violations.append(f"rewrote {what}.{attr}")
                raise _refusal(f"setting {attr} is not allowed here")
        elif event == "sys._getframe" or event == "sys._current_frames":
            raise _not_here("frames are not available here")

    def rigged_now():
        """What is rigged at this moment. Checked around every call of the candidate's functions too,
        not only at the end: a patch that puts itself back later (a self-restoring random.randint) is
        caught while it is in place."""
        nonlocal versions
        found = []
        if _gettrace() is not None or _getprofile() is not None:
            found.append("set a trace or profile hook")
        if _gc_on() or _len(_gc_callbacks):
            found.append("turned the garbage collector on or hooked it")
        if _threads():
            found.append("started a thread")
        if _any(_map(_is_not, _map(_getsignal, catchable), handlers)):  # by identity: == can be rigged
            found.append("set a signal handler")
        if _fast and not _any(_map(_is_not, _map(_modules.get, names), mods)):
            if read() == versions:
                return found
        found += _tampering(taken, _modules, pristine)
        if not found and _fast:  # a harmless change (an attribute added): the new baseline
            versions = read()
        return found

    def honest_copy(err):
        """What the tests get for an exception the candidate raised: the built-in class it derives from
        (or a watched library's, like statistics.StatisticsError), with its arguments if they are plain
        data. The candidate's own class could run its code after the call (its __str__, its
        finalizer), where no check sees it."""
        for kind in _mro(_type(err)):  # a built-in exception class, or one of a watched library's
            if _flags(kind) & BASE_EXCEPTION and (not _flags(kind) & HEAP_TYPE or _hash(kind) in library):
                break
        else:  # an MRO rewritten by a metaclass
            kind = _exception_type
        args = _args(err)
        args = args if why_not(args) is None else ()
        try:
            return kind(*args)
        except BaseException:  # a class whose constructor wants other arguments
            return _exception_type(*args)

    def wrap(fn, name):
        def call(*args, **kwargs):
            found = rigged_now()
            plain_args = why_not((args, kwargs)) is None
            raised = result = None
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:  # tests may catch it and carry on: checked all the same
                raised = (honest_copy(err),)
            # the candidate's exception is gone now: its finalizer has run, before the check below
            found += rigged_now()
            planted = why_not((args, kwargs)) if plain_args else None  # in the tests' own data
            if planted is not None:
                found.append(f"{name} put {planted[0]} into its arguments")
            if found:
                violations.extend(found)
                raise _rigged(found[0])
            if raised is not None:
                raise raised[0]
            problem = why_not(result)
            if problem is not None:
                why, kind = problem
                if probe:
                    if kind is not None:
                        returned.add(f"{kind.__module__}:{qualname(kind)}")
                    return result
                violations.append(f"{name} returned {why}")
                raise _rigged(violations[-1])
            return result

        return call

    def verdict_and_exit(ok):
        problems = _list(_dict.fromkeys(violations + rigged_now()))  # each said once, in order
        if problems:
            write(VERDICT_FD, b"rigged:" + _join(problems)[:1000].encode("utf-8", "replace"))
            _exit(1)
        if not ok:
            _exit(1)
        write(VERDICT_FD, nonce + (b"|" + _dumps(_sorted(returned)).encode() if probe else b""))
        _exit(0)

    tests = {"__name__": "__main__", "__builtins__": pristine}
    candidate = {"__name__": "__main__", "__builtins__": builtins}
    gc.disable()
    sys.addaudithook(guard)
    try:
        if len(codes) > 2:  # the prompt's helpers (HumanEval/38's encode_cyclic): the tests call these
            try:
                _exec(codes[2], tests)
            except Exception:
                pass  # a prompt that is not a whole program: the candidate's own helpers are used instead
        exec(codes[0], candidate)
        entry = candidate.get(entry_point)
        if not _callable(entry):
            _print(f"the candidate defines no function {entry_point}", file=sys.stderr)
            verdict_and_exit(False)
        for name, obj in _list(candidate.items()):  # helpers the tests call that the prompt did not define
            if _type(name) is not _str or name.startswith("__") or name in tests or name in pristine:
                continue
            if _isinstance(obj, _functions):
                tests[name] = wrap(obj, name)
            elif _type(obj) is _module_type and _hash(obj) in taken_modules:
                tests[name] = obj
            elif why_not(obj) is None:
                tests[name] = obj
        tests[entry_point] = checked = wrap(entry, entry_point)
        _exec(codes[1], tests)
        tests["check"](checked)
        _flush()
        _flush_err()
    except BaseException:  # SystemExit and KeyboardInterrupt too: leaving early is failing
        try:
            _print_exc()
        except BaseException:
            pass
        verdict_and_exit(False)
    verdict_and_exit(True)


# -- the runner side --------------------------------------------------------------------------------------
class Tail:
    """Keeps the last `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap):
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def add(self, chunk):
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]

    def text(self):
        return self.buf.decode("utf-8", "replace")


# Around every job the runner reads a few kernel files. It does so with plain system calls on bytes: a
# forked child shares this process's memory, so every page the runner writes after a fork is copied, and
# text files, exceptions and selector objects touch many pages for each read.
def oom_counter():
    """A descriptor of the container's OOM-kill counter (cgroup v2, else v1), kept open for the runner's
    life (a job's child closes it with every other descriptor), or None when there is none."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            continue
    return None


def oom_kills(fd):
    """The OOM-kill count now (the kernel renders the file afresh at each read from its start), or None."""
    if fd is None:
        return None
    try:
        text = os.pread(fd, 4096, 0)
    except OSError:
        return None
    for line in text.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"oom_kill":
            return int(value)
    return None


def processes():
    """{pid: pgid} of every live (non-zombie) process here except this runner."""
    found, me = {}, str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
            finally:
                os.close(fd)
        except OSError:
            continue
        if fields and fields[0] != b"Z":
            found[int(name)] = int(fields[2])
    return found


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def others():
    """Whether any process but this runner is here, alive or dead and not yet reaped."""
    me = str(os.getpid())
    return any(name.isdigit() and name != me for name in os.listdir("/proc"))


def kill_all(pgid):
    """SIGKILL the job's group, then anything else. Returns the pids that had escaped the group."""
    if not others():  # most jobs: their process is reaped already and started no other
        return []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 1.0
    while True:  # SIGKILL is asynchronous: give the group a moment to die before calling anyone a stray
        reap()
        left = processes()
        if not any(g == pgid for g in left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    strays = sorted(p for p, g in left.items() if g != pgid)
    if not left:  # nothing but this runner is alive, so nothing can fork any more
        return strays
    for _ in range(100):  # a fork bomb may still be forking: repeat until the namespace is empty
        if not processes():
            break
        os.kill(-1, signal.SIGKILL)  # every process we may signal, except ourselves (init)
        time.sleep(0.005)
        reap()
    return strays


def leftover_files():
    left = []
    for d in SCRATCH:
        try:
            left += [os.path.join(d, n) for n in os.listdir(d)]
        except OSError:
            pass
    return left


def remove_job_dir():
    try:  # mostly empty: one system call
        os.rmdir(JOB_DIR)
        return
    except OSError:
        pass

    def make_writable(func, path, _exc):  # the candidate may have chmod'ed things away
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(JOB_DIR, onerror=make_writable)


def drain(fd, tail):
    """Read what is left in a pipe without waiting on writers that escaped (they are dead by now)."""
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 1 << 16):
            tail.add(chunk)
    except (BlockingIOError, OSError):
        pass


@functools.lru_cache(maxsize=1024)
def compiled(source, name):
    """A trusted source compiled once for all the jobs that share it (the 20 samples of a problem share
    its tests); None when it does not compile (the job reports that itself)."""
    try:
        code = compile(source, name, "exec")
    except Exception:
        return None
    gc.freeze()  # out of the collector's sight too, like everything loaded before the first job
    return code


@functools.lru_cache(maxsize=1024)
def test_imports(source):
    """The modules a test source imports."""
    return tuple(dict.fromkeys(IMPORTED.findall(source)))


@functools.lru_cache(maxsize=1024)
def helpers_for(prompt, tests, entry_point):
    """The prompt compiled, if the tests use a name it defines besides the entry point (HumanEval/38's
    encode_cyclic); else None, and the helpers need not run. Also None for a prompt that is not a whole
    program: it has no helpers to give."""
    code = compiled(prompt, "<prompt>")
    if code is None:
        return None
    used = set(re.findall(r"\w+", tests))
    return code if any(name in used for name in code.co_names if name != entry_point) else None


def run_job(job, prepared):
    cap = int(job.get("output_cap", 16384))
    judge = job.get("judge")
    if judge is not None:  # sources are [candidate, tests]; the prompt's helpers run with the tests
        job["compiled"] = {1: compiled(job["sources"][1], "<source 1>")}
        judge["imported"] = test_imports(judge.get("test_source", ""))
        helpers = helpers_for(judge.get("helpers") or "", job["sources"][1], judge["entry_point"])
        if helpers:
            job["sources"], job["compiled"][2] = [*job["sources"][:2], judge["helpers"]], helpers
    timeout = float(job["timeout"])
    os.mkdir(JOB_DIR, 0o700)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ver_r, ver_w = os.pipe()
    oom_before = oom_kills(prepared["oom_counter"])
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            child(job, out_w, err_w, ver_w, prepared)
        finally:
            os._exit(70)
    for fd in (out_w, err_w, ver_w):
        os.close(fd)
    out, err, verdict = Tail(cap), Tail(cap), Tail(4096)  # room for a rigged verdict's words
    tails = {out_r: out, err_r: err, ver_r: verdict}
    poller = select.poll()
    for fd in tails:
        poller.register(fd, select.POLLIN)
    try:  # a pidfd becomes readable when the child exits; without one we poll
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = None
    timed_out, status, usage = False, None, None
    while status is None:
        left = start + timeout - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)  # the group may not exist yet if the child never ran setsid
            _, status, usage = os.wait4(pid, 0)
            break
        for fd, _ in poller.poll(int(1000 * (min(left, 0.01) if pidfd is None else left)) + 1):
            if fd == pidfd:
                continue
            chunk = os.read(fd, 1 << 16)
            if chunk:
                tails[fd].add(chunk)
            else:
                poller.unregister(fd)
        done, st, ru = os.wait4(pid, os.WNOHANG)
        if done:
            status, usage = st, ru
    wall = time.monotonic() - start
    strays = kill_all(pid)
    for fd, tail in tails.items():
        drain(fd, tail)
        os.close(fd)
    if pidfd is not None:
        os.close(pidfd)
    oom_after = oom_kills(prepared["oom_counter"])
    remove_job_dir()
    tainted = []
    if strays:
        tainted.append(f"processes outlived the job: {strays[:10]}")
    files = leftover_files()
    if files:
        tainted.append(f"files left outside the job folder: {files[:10]}")
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    if oom_before is None and killed_by == signal.SIGKILL and not timed_out:
        oom = True  # no counter to read: an unexplained SIGKILL is the OOM killer's signature
    return {
        "id": job.get("id"),
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": killed_by,
        "timed_out": timed_out,
        "oom": oom,
        "verdict": verdict.text(),
        "stdout": out.text(), "stdout_truncated": out.total > cap, "stdout_bytes": out.total,
        "stderr": err.text(), "stderr_truncated": err.total > cap, "stderr_bytes": err.total,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "tainted": tainted,
    }


def main():
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # closes /proc/1/{fd,mem,environ} to the jobs
    prepared = prepare()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files: the jobs inherit it and cannot raise it
    os.environ.clear()  # the jobs' environment, set here once: they inherit it
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=JOB_DIR, TMPDIR=JOB_DIR, LANG="C.UTF-8")
    # Move everything loaded so far out of the collector's sight: a collection in a forked child would
    # otherwise touch every object and copy every page (copy-on-write): milliseconds per job.
    gc.collect()
    gc.freeze()
    oom = oom_kills(prepared["oom_counter"])
    write_frame({"ready": True, "python": sys.version.split()[0], "pid": os.getpid(), "oom": oom})
    while (frame := read_frame()) is not None:
        jobs = frame if isinstance(frame, list) else [frame]  # a batch: one round trip for them all
        for i, job in enumerate(jobs):
            try:
                result = run_job(job, prepared)
            except Exception:
                result = {"id": job.get("id"), "runner_error": traceback.format_exc()[-4000:]}
            write_frame(result)
            if "runner_error" in result or result["timed_out"] or result["oom"] or result["tainted"]:
                for rest in jobs[i + 1 :]:  # this container is done for: the host runs them elsewhere
                    write_frame({"id": rest.get("id"), "not_run": True})
                break


if __name__ == "__main__":
    main()
