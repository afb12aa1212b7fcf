"""Measure, inside a running CPython, the struct offsets loopspy reads, and check the layout
rules it assumes. Prints one JSON object.

    python3 python_offsets/derive.py
    python3 python_offsets/derive.py --context-ver   # only thread_context_ver (3.13+ too)

The tables in this folder (3.X.toml) are written from the CPython headers; the integration
tests run this script under every supported interpreter and fail if a table disagrees with
what the interpreter actually lays out. Nothing here is used at run time.

Every offset is found by searching the real structs for a value known from Python (an object's
id, a thread's ident, a line number...), with more than one sample where one could match by
chance, and must be unique. Fields a version does not have come out as null: their search finds
nothing. Any failed check exits non-zero with a message. Linux only (/proc/self/maps keeps the
scans inside mapped memory).
"""
import asyncio
import ctypes
import dis
import json
import sys
import threading
import time

PTR = ctypes.sizeof(ctypes.c_void_p)
V311 = sys.version_info >= (3, 11)


def fail(message):
    raise SystemExit("derive.py (Python %d.%d): %s" % (sys.version_info[:2] + (message,)))


def check(condition, message):
    if not condition:
        fail(message)


def unique(candidates, what):
    found = sorted(set(candidates))
    check(len(found) == 1, "%s: expected exactly one offset, found %r" % (what, found))
    return found[0]


def at_most_one(candidates, what):
    found = sorted(set(candidates))
    check(len(found) <= 1, "%s: expected at most one offset, found %r" % (what, found))
    return found[0] if found else None


def words(addr, size):
    raw = ctypes.string_at(addr, size)
    return [int.from_bytes(raw[i:i + PTR], "little") for i in range(0, size, PTR)]


def offset_of(obj, target, size=512):
    for i, w in enumerate(words(id(obj), size)):
        if w == id(target):
            return i * PTR
    raise SystemExit("no pointer to %r found in %r" % (target, type(obj)))


def u64(addr):
    return int.from_bytes(ctypes.string_at(addr, 8), "little")


# ---------------------------------------------------------------------------------------------
# Memory access that cannot fault: every read is clipped to the readable mappings.


def readable_len(addr, size):
    """How many of the `size` bytes at `addr` are in readable mappings (0 if `addr` is not)."""
    if addr <= 0:
        return 0
    end = addr
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if lo > end:
                break
            if lo <= end < hi:
                if fields[1][0] != "r" or name.startswith("[v"):  # [vvar], [vsyscall]...
                    break
                end = hi
                if end >= addr + size:
                    break
    return max(0, min(size, end - addr))


def read(addr, size, exact=True):
    """`size` bytes at `addr`, read with the GIL held (fewer, if not exact, at a mapping end)."""
    n = readable_len(addr, size)
    if exact:
        check(n == size, "cannot read %d bytes at %#x" % (size, addr))
    return ctypes.string_at(addr, n) if n else b""


def read_released(addr, size):
    """`size` bytes at `addr`, copied while this thread has released the GIL: ctypes.memmove
    is a plain CFUNCTYPE, and ctypes drops the GIL around such calls."""
    check(readable_len(addr, size) == size, "cannot read %d bytes at %#x" % (size, addr))
    buf = ctypes.create_string_buffer(size)
    ctypes.memmove(buf, addr, size)
    return buf.raw


def word_at(blob, off):
    return int.from_bytes(blob[off:off + PTR], "little")


def int_at(blob, off):
    return int.from_bytes(blob[off:off + 4], "little", signed=True)


def word_offsets(blob, value):
    return [o for o in range(0, len(blob) - PTR + 1, PTR) if word_at(blob, o) == value]


def int_offsets(blob, value):
    return [o for o in range(0, len(blob) - 3, 4) if int_at(blob, o) == value]


def common(*sets):
    out = set(sets[0])
    for s in sets[1:]:
        out &= set(s)
    return out


# ---------------------------------------------------------------------------------------------
# asyncio tasks, strings, dicts (what the task reader uses).


def dict_entries(d, v311):
    """Walk a dict the way loopspy does; return (key_id, value_id) pairs."""
    keys = u64(id(d) + 32)
    values = u64(id(d) + 40)
    assert values == 0, "split dicts are not expected here"
    if v311:
        hdr = ctypes.string_at(keys, 32)
        log2_index_bytes, kind = hdr[9], hdr[10]
        nentries = int.from_bytes(hdr[24:32], "little")
        entries = keys + 32 + (1 << log2_index_bytes)
        size = 16 if kind != 0 else 24
        key_off = 0 if kind != 0 else 8
    else:
        hdr = ctypes.string_at(keys, 40)
        dk_size = int.from_bytes(hdr[8:16], "little")
        nentries = int.from_bytes(hdr[32:40], "little")
        width = 1 if dk_size <= 0xFF else 2 if dk_size <= 0xFFFF else 4 if dk_size <= 0xFFFFFFFF else 8
        entries = keys + 40 + dk_size * width
        size, key_off = 24, 8
    out = []
    for i in range(nentries):
        e = entries + i * size
        out.append((u64(e + key_off), u64(e + key_off + 8)))
    return out


async def probe():
    async def loopspy_probe_coroutine():
        await asyncio.sleep(0)

    coro = loopspy_probe_coroutine()
    name = "loopspy-probe-" + "name"
    task = asyncio.get_running_loop().create_task(coro, name=name)
    result = {
        "task_coro": offset_of(task, coro),
        "task_name": offset_of(task, name),
        "coro_qualname": offset_of(coro, coro.__qualname__),
    }
    await task
    return result


def measure_objects(found):
    import asyncio.tasks as tasks_module
    found["module_dict"] = offset_of(tasks_module, tasks_module.__dict__, 64)
    found["type_name"] = 24
    assert ctypes.string_at(u64(id(int) + 24)) == b"int"
    # Compact ASCII strings: data right after the PyASCIIObject header.
    s = "".join(["loop", "spy"])
    header = 48 if sys.version_info < (3, 12) else 40
    assert ctypes.string_at(id(s) + header, 7) == b"loopspy", "ascii header size"
    found["ascii_data"] = header
    found["str_length"] = 16
    found["str_state"] = 32
    assert u64(id(s) + 16) == 7
    # Dict walks: a general dict (object keys) and a string-keyed one.
    a, b = object(), object()
    general = {a: b}
    assert dict_entries(general, V311) == [(id(a), id(b))], "general dict layout"
    keyed = {"k" + str(len(s)): b}
    (k, v), = dict_entries(keyed, V311)
    assert v == id(b), "unicode dict layout"
    assert "_current_tasks" in tasks_module.__dict__, "asyncio.tasks._current_tasks"


# ---------------------------------------------------------------------------------------------
# Code objects. Probes are compiled from source placed at unusual line numbers, so their
# co_firstlineno cannot be mistaken for another int in the struct.

PROBE_LINE = 4321
PROBE_SOURCE = "\n" * (PROBE_LINE - 1) + """\
class LoopspyProbeClass:
    def loopspy_probe_method(self, a):
        b = a + 1
        c = b * 2
        d = [a, b, c, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25]
        for e in d:
            c = c + e
        return c


def loopspy_probe_generator():
""" + "    x = 1\n" * 150 + "    yield 1\n" + "    x = 2\n" * 70 + "    yield 2\n"

OTHER_LINE = 5873
OTHER_SOURCE = "\n" * (OTHER_LINE - 1) + "def loopspy_probe_function(x):\n    return x + 1\n"


def probe_namespace():
    ns = {}
    exec(compile(PROBE_SOURCE, "loopspy_probe_file.py", "exec"), ns)
    exec(compile(OTHER_SOURCE, "loopspy_other_file.py", "exec"), ns)
    return ns


def measure_code(found, ns):
    method = ns["LoopspyProbeClass"].loopspy_probe_method.__code__  # never called
    other = ns["loopspy_probe_function"].__code__
    probes = [method, other]
    check(method.co_firstlineno == PROBE_LINE + 1 and other.co_firstlineno == OTHER_LINE,
          "probe line numbers")
    size = type(method).__basicsize__
    blobs = [read(id(c), size) for c in probes]

    def pointer_to(attr):
        return unique(common(*[word_offsets(b, id(getattr(c, attr))) for b, c in zip(blobs, probes)]),
                      "code " + attr)

    found["code_filename"] = pointer_to("co_filename")
    found["code_name"] = pointer_to("co_name")
    if hasattr(method, "co_qualname"):
        check(method.co_qualname != method.co_name, "probe qualname differs from name")
        found["code_qualname"] = pointer_to("co_qualname")
    else:
        found["code_qualname"] = None
    found["code_firstlineno"] = unique(
        common(*[int_offsets(b, c.co_firstlineno) for b, c in zip(blobs, probes)]),
        "code co_firstlineno")

    # The line table: co_linetable where it exists (3.10+; co_lnotab is then computed on each
    # access), co_lnotab before.
    attr = "co_linetable" if hasattr(method, "co_linetable") else "co_lnotab"
    found["code_linetable"] = pointer_to(attr)
    found["code_linetable_attr"] = attr

    # The bytecode: 3.11+ keeps it inside the code object (co_code_adaptive, the trailing
    # array), earlier versions point at a bytes object. Search the struct for the bytecode of
    # the never-called method. Quickening may already have written counters into the inline
    # cache units (zero in co_code) and swapped opcodes for superinstructions (3.12), so
    # compare the first unit whole and the oparg byte of every other non-cache unit.
    inline = []
    for b, c in zip(blobs, probes):
        raw = c.co_code
        whole = read(id(c), size + len(raw), exact=False)
        hits = []
        for off in range(16, size + 1, 2):
            window = whole[off:off + len(raw)]
            if len(window) < len(raw) or window[:2] != raw[:2]:
                continue
            if all(window[i + 1] == raw[i + 1] for i in range(2, len(raw), 2)
                   if raw[i:i + 2] != b"\0\0"):
                hits.append(off)
        inline.append(hits)
    adaptive = at_most_one(common(*inline), "code co_code_adaptive")
    found["code_code_adaptive"] = adaptive
    if adaptive is None:
        check(not V311, "no inline bytecode found on 3.11+")
        found["code_code"] = pointer_to("co_code")
    else:
        found["code_code"] = None
        for c in probes:  # Py_SIZE(code) counts code units
            check(u64(id(c) + 16) * 2 == len(c.co_code), "code ob_size is not len(co_code) // 2")


# ---------------------------------------------------------------------------------------------
# Bytes objects.


def measure_bytes(found):
    samples = [b"loopspy-bytes-probe:" * 229, b"LOOPSPY-BYTES-PROBE;" * 311 + b"xyz"]
    blobs = [read(id(b), 64) for b in samples]
    found["bytes_ob_size"] = unique(common(*[word_offsets(blob, len(b)) for blob, b in zip(blobs, samples)]),
                                    "bytes ob_size")
    found["bytes_ob_sval"] = unique(common(*[[o for o in range(0, 48) if blob[o:o + 16] == b[:16]]
                                             for blob, b in zip(blobs, samples)]), "bytes ob_sval")


# ---------------------------------------------------------------------------------------------
# Threads, the interpreter's thread list, frames and the GIL.

API = ctypes.pythonapi
API.PyThreadState_Get.restype = ctypes.c_void_p
API.PyInterpreterState_Head.restype = ctypes.c_void_p
TSTATE_SCAN = 512
INTERP_SCAN = 16384


class Worker:
    """A thread that publishes its thread state and then blocks in a C call (a lock acquire)
    until released, its innermost Python frame `run`, or with in_generator a generator's frame
    (which lives in the generator, not on the thread's frame stack, and calls no Python
    function: no stale callee frame on the stack names it as its caller)."""

    def __init__(self, in_generator=False):
        self.in_generator = in_generator
        self.gate = threading.Lock()
        self.gate.acquire()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        self.ready.wait()
        deadline = time.monotonic() + 10
        while True:  # until it sits in the gate's acquire
            frame = sys._current_frames().get(self.ident)
            if frame is not None and (frame.f_code, frame.f_lineno) == self.block:
                break
            check(time.monotonic() < deadline, "worker thread never blocked")
            time.sleep(0.001)

    def run(self):
        self.tstate = API.PyThreadState_Get()
        self.ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        if self.in_generator:
            self.block = (Worker.hold.__code__, Worker.hold.__code__.co_firstlineno + 1)
            self.ready.set()
            for _ in self.hold():
                pass
        else:
            self.block = (Worker.run.__code__, sys._getframe().f_lineno + 2)
            self.ready.set()
            self.gate.acquire()

    def hold(self):
        self.gate.acquire()
        yield

    def frame(self):
        return sys._current_frames()[self.ident]

    def stop(self):
        self.gate.release()
        self.thread.join()


def iframe_of(frame, escaped=False):
    """3.11+: the _PyInterpreterFrame behind a frame object: PyFrameObject {PyObject_HEAD,
    f_back, f_frame (24), ...}. A live interpreter frame points back at the object
    (frame_obj); once its function has returned, the frame object holds a copy of it inside
    itself (with frame_obj cleared)."""
    addr = u64(id(frame) + 24)
    if escaped:
        check(id(frame) < addr < id(frame) + frame.__sizeof__(),
              "f_frame (24) of a returned frame is not inside the frame object")
    else:
        check(id(frame) in [word_at(read(addr, 64), o) for o in range(0, 64, PTR)],
              "f_frame (24) of %r does not point at its interpreter frame" % frame)
    return addr


def separate_interpreter_frames():
    """Whether frame objects are views of a separate _PyInterpreterFrame (3.11+): then the
    word at 24 of a live frame object (f_frame) points at memory that points back at it.
    Up to 3.10 that word is f_back, the caller's frame object, which does not."""
    me = sys._getframe()
    addr = u64(id(me) + 24)
    return readable_len(addr, 64) == 64 and id(me) in [word_at(read(addr, 64), o) for o in range(0, 64, PTR)]


def measure_threads(found, workers):
    interp = API.PyInterpreterState_Head()
    interpreter_frames = separate_interpreter_frames()
    found["frame_layout"] = "interpreter" if interpreter_frames else "object"
    main_ts = API.PyThreadState_Get()

    # interpreter: the newest thread state heads the list; the caller measured the candidates
    # once per worker start (each start makes a new head).
    w2, w3 = workers

    # thread: next (w3 -> w2 -> main), thread_id, native_thread_id.
    blob = {w: read(w.tstate, TSTATE_SCAN) for w in workers}
    blob_main = read(main_ts, TSTATE_SCAN)
    nxt = unique(common(word_offsets(blob[w3], w2.tstate), word_offsets(blob[w2], main_ts)), "thread next")
    found["thread_next"] = nxt
    head = found["interp_threads_head"]
    chain, addr = [], word_at(read(interp + head, PTR), 0)
    while addr and len(chain) < 10:
        chain.append(addr)
        addr = word_at(read(addr + nxt, PTR), 0)
    check(chain == [w3.tstate, w2.tstate, main_ts],
          "thread list from the head via next is %r, not [w3, w2, main]" % [hex(a) for a in chain])
    found["thread_thread_id"] = unique(common(word_offsets(blob[w3], w3.ident), word_offsets(blob[w2], w2.ident),
                                              word_offsets(blob_main, threading.main_thread().ident)),
                                       "thread thread_id")
    found["thread_native_thread_id"] = at_most_one(
        common(word_offsets(blob[w3], w3.native_id), word_offsets(blob[w2], w2.native_id),
               word_offsets(blob_main, threading.main_thread().native_id)), "thread native_thread_id")

    # thread: the current frame. Up to 3.10 the thread state points at the frame object;
    # from 3.11 at the _PyInterpreterFrame behind it, directly (3.13 current_frame) or through
    # the _PyCFrame (3.11, 3.12: cframe -> current_frame). Samples: the blocked workers (the
    # frame sys._current_frames() reports) and this thread, copied by memmove from inside
    # main_thread_frame (so that function's frame is current).
    if interpreter_frames:
        expect = {w: iframe_of(w.frame()) for w in workers}
    else:
        expect = {w: id(w.frame()) for w in workers}
    direct = common(*[word_offsets(blob[w], expect[w]) for w in workers])
    snap, me = main_thread_frame(main_ts, TSTATE_SCAN, interpreter_frames)
    direct &= set(word_offsets(snap, me))
    found["thread_frame"] = at_most_one(direct, "thread frame")
    found["thread_cframe"] = found["cframe_current_frame"] = None
    if found["thread_frame"] is not None:
        return
    check(interpreter_frames, "no frame pointer found in the thread state")
    via = None
    for w in workers:
        pairs = set()
        for o in range(0, TSTATE_SCAN, PTR):
            ptr = word_at(blob[w], o)
            if readable_len(ptr, 32) == 32:
                pairs |= {(o, k) for k in word_offsets(read(ptr, 32), expect[w])}
        via = pairs if via is None else via & pairs
    # Some other pointer may lead to a copy of the workers' frame pointer; keep the pairs that
    # also give this thread's current frame, read while it runs.
    via = [(o, k) for o, k in via if main_thread_cframe(main_ts, o, k)]
    cframe, current = unique(via, "thread cframe -> current_frame")
    found["thread_cframe"], found["cframe_current_frame"] = cframe, current


def main_thread_frame(main_ts, size, interpreter_frames):
    """A copy of this thread's state, taken while this function's frame is the current one,
    and the frame pointer the state should hold (the frame object, or from 3.11 the
    interpreter frame, read while it is live)."""
    me = sys._getframe()
    expect = iframe_of(me) if interpreter_frames else id(me)
    buf = ctypes.create_string_buffer(size)
    ctypes.memmove(buf, main_ts, size)
    return buf.raw, expect


def main_thread_cframe(main_ts, cframe, current):
    """Whether tstate->cframe->current_frame is this function's frame while it runs."""
    expect = iframe_of(sys._getframe())
    ptr = ctypes.c_uint64()
    ctypes.memmove(ctypes.byref(ptr), main_ts + cframe, 8)
    if readable_len(ptr.value + current, 8) < 8:
        return False
    ctypes.memmove(ctypes.byref(ptr), ptr.value + current, 8)
    return ptr.value == expect


def measure_frames(found, ns, workers):
    gen = ns["loopspy_probe_generator"]()
    next(gen)
    if found["frame_layout"] == "interpreter":
        frame_probe_outer(found, gen, workers)
    else:
        measure_object_frames(found, gen, workers)


def measure_object_frames(found, gen, workers):
    """PyFrameObject (3.8-3.10): f_back, f_code, f_lasti. Samples: this thread's frames, the
    blocked workers' frames, and a generator suspended at two yields (large f_lasti values).
    Python's f_lasti is in bytes; the C field is in bytes (3.8, 3.9) or code units (3.10)."""
    me, caller = sys._getframe(), sys._getframe(1)
    frames = [me, caller] + [w.frame() for w in workers]
    size = type(me).__basicsize__
    blobs = [read(id(f), size) for f in frames]
    found["frame_back"] = unique(common(*[word_offsets(b, id(f.f_back)) for b, f in zip(blobs, frames)]),
                                 "frame f_back")
    found["frame_code"] = unique(common(*[word_offsets(b, id(f.f_code)) for b, f in zip(blobs, frames)]),
                                 "frame f_code")
    found["frame_globals"] = unique(
        common(*[word_offsets(b, id(f.f_globals)) for b, f in zip(blobs, frames)]), "frame f_globals")
    samples = []
    for _ in range(2):
        g = gen.gi_frame
        samples.append((read(id(g), size), g.f_lasti))
        if len(samples) < 2:
            next(gen)
    check(samples[0][1] > 400 and samples[1][1] > samples[0][1], "generator f_lasti samples")
    samples += [(b, f.f_lasti) for b, f in zip(blobs[2:], frames[2:])]
    units = {}
    for unit in (1, 2):
        units[unit] = common(*[int_offsets(b, lasti // unit) for b, lasti in samples])
    matching = [u for u in units if units[u]]
    check(len(matching) == 1, "f_lasti unit: candidates %r" % units)
    found["frame_lasti_unit"] = matching[0]
    found["frame_lasti"] = unique(units[matching[0]], "frame f_lasti")
    found["frame_instr"] = found["frame_owner"] = found["frame_cstack_owner"] = None
    found["frame_instr_is_previous"] = None


def frame_probe_outer(found, gen, workers):
    return frame_probe_inner(found, gen, workers, sys._getframe())


def frame_probe_inner(found, gen, workers, outer):
    measure_interpreter_frames(found, gen, workers, [sys._getframe(), outer])


def frame_escape():
    return sys._getframe()


FRAME_SCAN = 80


def measure_interpreter_frames(found, gen, workers, live):
    """_PyInterpreterFrame (3.11+). Samples: two live frames of this thread (each suspended at
    a call), the blocked workers (owned by their thread), a suspended generator (owned by the
    generator) and the frame of a returned function kept alive by its frame object (owned by
    the frame object)."""
    escaped = frame_escape()
    threads = live + [w.frame() for w in workers]
    all_frames = threads + [gen.gi_frame, escaped]
    blobs = {id(f): read(iframe_of(f, f is escaped), FRAME_SCAN) for f in all_frames}

    def scan(frames, value_of, what):
        return unique(common(*[word_offsets(blobs[id(f)], value_of(f)) for f in frames]), what)

    found["frame_code"] = scan(all_frames, lambda f: id(f.f_code), "frame code")
    found["frame_globals"] = scan(all_frames, lambda f: id(f.f_globals), "frame globals")
    found["frame_back"] = back = scan(live, lambda f: iframe_of(f.f_back), "frame previous")

    # The instruction pointer: an address in the code object's inline bytecode, at f_lasti
    # bytes from its start (the frames are suspended, so f_lasti is current).
    adaptive = found["code_code_adaptive"]
    candidates = []
    for f in threads + [gen.gi_frame]:
        start = id(f.f_code) + adaptive
        check(f.f_lasti >= 0, "suspended frame with f_lasti %d" % f.f_lasti)
        candidates.append(word_offsets(blobs[id(f)], start + f.f_lasti))
    found["frame_instr"] = instr = unique(common(*candidates), "frame instr")
    found["frame_lasti"] = found["frame_lasti_unit"] = None

    # What the pointer names in a generator suspended at a yield: the YIELD_VALUE itself
    # (the instruction started last: 3.11, 3.12) or the one after it, to run on resume (3.13).
    code = gen.gi_frame.f_code
    at = word_at(blobs[id(gen.gi_frame)], instr) - (id(code) + adaptive)
    ops = [i for i in dis.get_instructions(code)]
    here = [n for n, i in enumerate(ops) if i.offset == at]
    check(len(here) == 1, "generator instr at %d is no instruction start" % at)
    if ops[here[0]].opname == "YIELD_VALUE":
        found["frame_instr_is_previous"] = True
    else:
        check(here[0] > 0 and ops[here[0] - 1].opname == "YIELD_VALUE",
              "generator instr at %s, not at or after its YIELD_VALUE" % ops[here[0]].opname)
        found["frame_instr_is_previous"] = False

    # owner: 0 thread, 1 generator, 2 frame object.
    owners = [(f, 0) for f in live] + [(w.frame(), 1 if w.in_generator else 0) for w in workers]
    owners += [(gen.gi_frame, 1), (escaped, 2)]
    owner = unique(common(*[[o for o in range(FRAME_SCAN) if blobs[id(f)][o] == v] for f, v in owners]),
                   "frame owner")
    found["frame_owner"] = owner

    # 3.12+: the C stack shim. The chain of this thread ends (previous == NULL) at the frame
    # the C code entering the eval loop pushed, owned by the C stack; 3.11 has none (the owner
    # of the outermost frame is the thread's, 0).
    addr, chain = iframe_of(sys._getframe()), []
    while addr and len(chain) < 1000:
        b = read(addr, FRAME_SCAN)
        chain.append(b[owner])
        addr = word_at(b, back)
    check(addr == 0, "frame chain does not end")
    last = chain[-1]
    check(all(o == 0 for o in chain[:-1]), "owners along this thread's chain: %r" % chain)
    found["frame_cstack_owner"] = last if last not in (0, 1, 2) else None


def measure_gil(found):
    """Up to 3.11 _PyRuntime.gilstate.tstate_current holds the thread state holding the GIL
    (NULL when free); 3.12 moved it to a thread-local, and the interpreter's ceval state points
    at a struct _gil_runtime_state {interval, last_holder, locked, ...}. Compare copies taken
    with the GIL held (ctypes.string_at) and released by this thread (ctypes.memmove); the
    other threads are blocked in lock acquires, so nobody takes it meanwhile."""
    main_ts = API.PyThreadState_Get()
    runtime = ctypes.addressof(ctypes.c_char.in_dll(API, "_PyRuntime"))
    n = readable_len(runtime, 8192)
    held, released = read(runtime, n), read_released(runtime, n)
    tstate_current = [o for o in word_offsets(held, main_ts) if word_at(released, o) == 0]
    found["gil_last_holder"] = found["gil_locked"] = None
    if at_most_one(tstate_current, "_PyRuntime tstate_current") is not None:
        found["gil_layout"] = "tstate_current"
        return
    check(sys.version_info >= (3, 12), "no tstate_current in _PyRuntime")
    interp = API.PyInterpreterState_Head()
    blob = read(interp, INTERP_SCAN, exact=False)
    layouts = set()
    for o in range(0, len(blob) - PTR + 1, PTR):
        ptr = word_at(blob, o)
        if ptr < 4096 or ptr % PTR or readable_len(ptr, 64) < 64:
            continue
        held = read(ptr, 64)
        holders = word_offsets(held, main_ts)
        locks = int_offsets(held, 1)
        if not holders or not locks:
            continue
        released = read_released(ptr, 64)
        holders = [h for h in holders if word_at(released, h) == main_ts]
        locks = [k for k in locks if int_at(released, k) == 0]
        layouts |= {(h, k) for h in holders for k in locks}
    last_holder, locked = unique(layouts, "gil last_holder, locked")
    found["gil_layout"] = "runtime_state"
    found["gil_last_holder"], found["gil_locked"] = last_holder, locked


def measure_interpreter(found):
    interp = API.PyInterpreterState_Head()
    heads = []

    def sample(w):
        heads.append(word_offsets(read(interp, INTERP_SCAN, exact=False), w.tstate))
        return w

    workers = [sample(Worker()), sample(Worker(in_generator=True))]
    found["interp_threads_head"] = unique(common(*heads), "interpreter threads head")
    return workers


def measure_context_ver(found):
    """thread context_ver: the word after the thread state's `context` pointer, which holds the
    entered Context (found as the one offset holding id(ctx) in two contexts run in turn); it
    must grow by one on entering a context and by one on leaving it."""
    import contextvars
    main_ts = API.PyThreadState_Get()
    seen = []

    def inside(ctx):
        blob = read(main_ts, TSTATE_SCAN)
        seen.append((set(word_offsets(blob, id(ctx))), blob))

    contexts = [contextvars.copy_context(), contextvars.copy_context()]
    for ctx in contexts:
        ctx.run(inside, ctx)
    context = unique(common(seen[0][0], seen[1][0]), "thread context")
    ver = context + PTR
    first, second = word_at(seen[0][1], ver), word_at(seen[1][1], ver)
    after = word_at(read(main_ts, TSTATE_SCAN), ver)
    check(second == first + 2 and after == second + 1,
          "thread context_ver at %d: %d, %d, then %d (expected +2, +1)" % (ver, first, second, after))
    found["thread_context_ver"] = ver


# ---------------------------------------------------------------------------------------------
# Every task and what it awaits (the `tasks` command, src/remote/all_tasks.rs).

V313 = sys.version_info >= (3, 13)


def heap_type_cached_keys(tp, key):
    """3.11+: the offset in a heap type of ht_cached_keys, the shared keys object of its
    instances' attribute values: the one word pointing at a keys object (3.11 layout, str
    keys) whose first entry is `key`."""
    size = type.__basicsize__
    blob = read(id(tp), size)
    hits = []
    for o in range(0, size - PTR + 1, PTR):
        keys = word_at(blob, o)
        if keys < 4096 or keys % PTR or readable_len(keys, 48) < 48:
            continue
        hdr = read(keys, 32)
        log2_index_bytes, kind = hdr[9], hdr[10]
        if kind not in (1, 2) or log2_index_bytes > 20:
            continue
        first = keys + 32 + (1 << log2_index_bytes)
        if readable_len(first, 16) == 16 and u64(first) == id(key):
            hits.append(o)
    return unique(hits, "heap type ht_cached_keys")


async def measure_task_graph(found):
    import functools
    import weakref
    loop = asyncio.get_running_loop()

    # Futures: fut_state (pending 0, cancelled 1, finished 2), fut_callback0 (the first done
    # callback), fut_callbacks (a list of (callback, context) tuples for the others).
    pending, cancelled, finished = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    finished.set_result(None)
    size = type(pending).__basicsize__
    blobs = [read(id(f), size) for f in (pending, cancelled, finished)]
    found["fut_state"] = unique(common(int_offsets(blobs[0], 0), int_offsets(blobs[1], 1),
                                       int_offsets(blobs[2], 2)), "future fut_state")

    def first_callback(fut):
        pass

    def second_callback(fut):
        pass

    pending.add_done_callback(first_callback)
    pending.add_done_callback(second_callback)
    found["fut_callback0"] = offset_of(pending, first_callback, size)
    blob = read(id(pending), size)
    lists = []
    for o in range(0, size - PTR + 1, PTR):
        ptr = word_at(blob, o)
        if ptr and readable_len(ptr, 32) == 32 and u64(ptr + 8) == id(list) and u64(ptr + 16) == 1:
            tup = u64(u64(ptr + 24))  # ob_item[0], the (callback, context) tuple
            if u64(tup + 24) == id(second_callback):
                lists.append(o)
    found["fut_callbacks"] = unique(lists, "future fut_callbacks")

    # A task suspended on a future: task_fut_waiter.
    waited = loop.create_future()

    async def loopspy_probe_inner(arg):
        await waited

    async def loopspy_probe_outer(arg):
        await inner_coro

    async def loopspy_probe_deep(arg, awaited):
        return [arg, await awaited]

    inner_coro = loopspy_probe_inner(1)
    outer_coro = loopspy_probe_outer(2)
    task = loop.create_task(outer_coro)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    found["task_fut_waiter"] = offset_of(task, waited, type(task).__basicsize__)

    # The coroutine's frame: gi_frame (a frame object, 3.8-3.10) or gi_iframe (the
    # _PyInterpreterFrame inside the coroutine, 3.11+), and the top of its value stack, which
    # holds the awaited object while suspended in an await (Objects/genobject.c _PyGen_yf).
    frame = outer_coro.cr_frame
    if V311:
        iframe = iframe_of(frame)
        found["gen_frame"] = iframe - id(outer_coro)
        check(0 < found["gen_frame"] < type(outer_coro).__basicsize__ + 64, "gi_iframe inside the coroutine")
        blob = read(iframe, FRAME_SCAN + 64)
        locals_at = unique(word_offsets(blob, id(2)), "frame localsplus (first argument)")
        slot = unique(word_offsets(blob, id(inner_coro)), "awaited coroutine on the value stack")
        stacktop = (slot - locals_at) // PTR + 1
        found["frame_localsplus"] = locals_at
        found["frame_stack"] = unique([o for o in int_offsets(blob[:locals_at], stacktop)],
                                      "frame stacktop")
        found["frame_valuestack"] = None
        found["stack_kind"] = "index"
    else:
        found["gen_frame"] = offset_of(outer_coro, frame, 64)
        fsize = frame.__sizeof__()
        blob = read(id(frame), fsize)
        slot = unique(word_offsets(blob, id(inner_coro)), "awaited coroutine on the value stack")
        slot_addr = id(frame) + slot
        if sys.version_info >= (3, 10):
            # A second sample, two deep on the value stack ([arg, awaited]).
            deep_inner = loopspy_probe_inner(3)
            deep = loopspy_probe_deep(4, deep_inner)
            deep.send(None)
            dframe = deep.cr_frame
            dblob = read(id(dframe), dframe.__sizeof__())
            # (the argument `awaited` is a fast local too: the value stack comes after the locals)
            dslot = id(dframe) + max(word_offsets(dblob, id(deep_inner)))

            def pairs_of(b, base, size, at):
                return {(o, d) for o in word_offsets_into(b, base, size)
                        for d in int_offsets(b[:120], (at - word_at(b, o)) // PTR + 1)
                        if (at - word_at(b, o)) % PTR == 0}
            both = pairs_of(blob, id(frame), fsize, slot_addr) & pairs_of(dblob, id(dframe), dframe.__sizeof__(), dslot)
            vs, depth = unique(both, "frame f_valuestack, f_stackdepth")
            check(int_at(dblob, depth) == 2, "f_stackdepth of the deep sample is 2")
            deep.close()
            found["frame_valuestack"], found["frame_stack"] = vs, depth
            found["stack_kind"] = "depth"
        else:
            found["frame_valuestack"] = None
            found["frame_stack"] = unique(word_offsets(blob[:120], slot_addr + PTR), "frame f_stacktop")
            found["stack_kind"] = "pointer"
        found["frame_localsplus"] = None
    waited.set_result(None)
    await task

    # The thread state's `dict` (PyThreadState_GetDict), where _asyncio files the running loop
    # under "__asyncio_running_event_loop__": a holder {PyObject_HEAD, rl_loop} up to 3.11, the
    # loop itself from 3.12.
    get_dict = ctypes.pythonapi.PyThreadState_GetDict
    # A borrowed reference: taken as an address, then made an object (which counts its own
    # reference; a py_object restype would drop one reference too many at exit).
    get_dict.restype = ctypes.c_void_p
    ts_dict = ctypes.cast(get_dict(), ctypes.py_object).value
    main_ts = API.PyThreadState_Get()
    found["thread_dict"] = unique(word_offsets(read(main_ts, TSTATE_SCAN), id(ts_dict)), "thread dict")
    check(sys.version_info >= (3, 13) or "__asyncio_running_event_loop__" in ts_dict,
          "no running loop in the thread state's dict")
    holder = ts_dict.get("__asyncio_running_event_loop__")
    if sys.version_info >= (3, 13):
        # 3.13 keeps the running loop in the thread state itself, not in its dict.
        check(holder is None, "3.13: a running loop in the thread state's dict")
        found["thread_dict"] = found["running_loop_holder"] = None
    elif sys.version_info >= (3, 12):
        check(holder is loop, "3.12+: the running loop itself in the thread state's dict")
        found["running_loop_holder"] = False
    else:
        check(u64(id(holder) + 16) == id(loop), "up to 3.11: a holder whose rl_loop (16) is the loop")
        found["running_loop_holder"] = True

    # Types: tp_basicsize, tp_flags, tp_base, tp_dictoffset (as Python shows them).
    class Probe:
        pass

    class ProbeSlots:
        __slots__ = ("a",)

    samples = [(t, read(id(t), type.__basicsize__)) for t in (Probe, ProbeSlots, weakref.WeakSet, int)]
    found["type_basicsize"] = unique(common(*[word_offsets(b, t.__basicsize__) for t, b in samples]),
                                     "type tp_basicsize")
    found["type_flags"] = unique(common(*[word_offsets(b, t.__flags__) for t, b in samples]), "type tp_flags")
    found["type_base"] = unique(common(*[word_offsets(b, id(t.__base__)) for t, b in samples[:2]]), "type tp_base")
    dictoffsets = [word_offsets(b, t.__dictoffset__ % (1 << 64)) for t, b in samples]
    found["type_dictoffset"] = unique(common(*dictoffsets), "type tp_dictoffset")

    # Instance attributes (WeakSet.data, TaskGroup._parent_task...): where each version keeps
    # them, checked on a fresh WeakSet, whose attributes are not materialised as a dict.
    ws = weakref.WeakSet()
    data = ws.data
    if sys.version_info >= (3, 13):
        layout = "3.13"
        check(u64(id(ws) - 24) == 0, "3.13: no managed dict yet")
        values = id(ws) + weakref.WeakSet.__basicsize__
        check(read(values + 3, 1) == b"\x01", "3.13: inline values valid")
        check(u64(values + 8) == id(data), "3.13: inline values[0] is data")
    elif sys.version_info >= (3, 12):
        layout = "3.12"
        dorv = u64(id(ws) - 24)
        check(dorv & 1 == 1 and u64(dorv + 1) == id(data), "3.12: tagged values pointer at -24")
    elif V311:
        layout = "3.11"
        check(u64(id(ws) - 24) == 0, "3.11: no managed dict yet")
        check(u64(u64(id(ws) - 32)) == id(data), "3.11: values pointer at -32")
    else:
        layout = "offset"
        check(weakref.WeakSet.__dictoffset__ > 0, "WeakSet tp_dictoffset > 0")
    found["instance_dict"] = layout
    found["type_cached_keys"] = heap_type_cached_keys(weakref.WeakSet, "data") if V311 else None

    # Sets: mask and table (setentry {key, hash}); weakrefs: wr_object.
    target = Probe()
    s = {target}
    blob = read(id(s), type(s).__basicsize__)
    table = unique([o for o in range(0, 64, PTR) if id(s) < word_at(blob, o) < id(s) + len(blob)],
                   "set table (smalltable)")
    found["set_table"] = table
    found["set_mask"] = unique(word_offsets(blob[:table], 7), "set mask")
    r = weakref.ref(target)
    check(offset_of(r, target, 64) == 16, "weakref wr_object at 16")

    # Done callbacks that link a child to what a parent awaits: a closure's cells (gather's
    # _done_callback, shield's), a partial's args (wait_for up to 3.11), a bound method's self.
    def outer_fn():
        captured = target

        def inner_fn():
            return captured
        return inner_fn
    closure_fn = outer_fn()
    found["func_closure"] = offset_of(closure_fn, closure_fn.__closure__, 128)
    check(offset_of(closure_fn.__closure__[0], target, 32) == 16, "cell ob_ref at 16")
    p = functools.partial(print, target)
    check(offset_of(p, p.args, 64) == 24, "partial args at 24")
    method = type("M", (), {"f": lambda self: None})().f
    check(offset_of(method, method.__self__, 64) == 24, "method im_self at 24")

    async def agen():
        yield 1
    g = agen()
    asend = g.asend(None)
    check(offset_of(asend, g, 64) == 16, "async_generator_asend ags_gen at 16")
    asend.close()
    fut = loop.create_future()
    it = fut.__await__()
    check(offset_of(it, fut, 64) == 16, "FutureIter future at 16")
    fut.cancel()


def word_offsets_into(blob, base, size):
    """Offsets of words that point inside [base, base + size)."""
    return [o for o in range(0, min(len(blob), 120) - PTR + 1, PTR) if base <= word_at(blob, o) < base + size]


def main():
    if sys.argv[1:] == ["--context-ver"]:
        # The one field the debug offsets of 3.13+ do not carry (remote/debug_offsets.rs).
        found = {"version": "%d.%d" % sys.version_info[:2]}
        measure_context_ver(found)
        print(json.dumps(found, sort_keys=True))
        return
    found = asyncio.run(probe())
    asyncio.run(measure_task_graph(found))
    measure_objects(found)
    ns = probe_namespace()
    measure_code(found, ns)
    measure_bytes(found)
    workers = measure_interpreter(found)
    try:
        measure_threads(found, workers)
        measure_frames(found, ns, workers)
        measure_gil(found)
        measure_context_ver(found)
    finally:
        for w in workers:
            w.stop()
    found["version"] = "%d.%d" % sys.version_info[:2]
    print(json.dumps(found, sort_keys=True))


main()
