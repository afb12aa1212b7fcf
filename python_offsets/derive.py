"""Measure, inside a running CPython, the struct offsets loopspy's asyncio-task reader uses,
and check the layout rules it assumes. Prints one JSON object.

    python3 python_offsets/derive.py

The tables in this folder (3.X.toml) are written from the CPython headers; the integration
tests run this script under every supported interpreter and fail if a table disagrees with
what the interpreter actually lays out. Nothing here is used at run time.
"""
import asyncio
import ctypes
import json
import sys

PTR = ctypes.sizeof(ctypes.c_void_p)


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


def main():
    v311 = sys.version_info >= (3, 11)
    found = asyncio.run(probe())
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
    assert dict_entries(general, v311) == [(id(a), id(b))], "general dict layout"
    keyed = {"k" + str(len(s)): b}
    (k, v), = dict_entries(keyed, v311)
    assert v == id(b), "unicode dict layout"
    assert "_current_tasks" in tasks_module.__dict__, "asyncio.tasks._current_tasks"
    found["version"] = "%d.%d" % sys.version_info[:2]
    print(json.dumps(found, sort_keys=True))


main()
