//! Tests of the task lister against made-up memory ([`FakeMemory`], shared with the stack and
//! running-task readers' tests).
//!
//! [`Image::build`] lays out, with CPython 3.12's offsets, what the lister walks: `sys.modules`
//! holding `asyncio.tasks`, whose `__dict__` holds `_scheduled_tasks` (a `WeakSet` whose `data`
//! lives in 3.12's tagged values pointer before the object, indexed like its type's shared
//! keys), `_eager_tasks` (a set), the weak references, three pending tasks and a finished one,
//! their names, coroutines (with the `_PyInterpreterFrame` inside, suspended in an `await` or a
//! plain `yield`), code objects and a gather-like done callback (a function whose closure cell
//! holds the future another task waits on). On it:
//!
//! - the exact listing: tasks, names, coroutines, the await chain innermost first, who awaits
//!   whom (directly and through the closure), finished tasks left out, the cap;
//! - torn images (words overwritten with garbage or with pointers into the image), random
//!   memory on every version's offsets, and memory changing between two reads of one listing:
//!   never a panic, never a task that is not one of the image's, and a bounded number of reads
//!   (the fake memory's budget fails the test of a reader that does not stop);
//! - bounds: a set whose mask says a huge table, an await chain that loops back on itself.

use super::*;
use crate::remote::memory::fake::{
    fuzz, Change, FakeMemory, Rng, ShiftingMemory, STATE_ASCII, STATE_COMPACT,
};
use crate::remote::offsets::for_minor;

const HEAP: u64 = 0x10_0000;
const HEAP_LEN: usize = 1 << 20;
/// Reads one listing of the small image may take, whatever the memory holds.
const MAX_READS: u64 = 20_000;

/// A bump allocator over one mapped region.
struct Image {
    mem: FakeMemory,
    next: u64,
    offsets: PythonOffsets,
    types: HashMap<&'static str, u64>,
    modules_ptr: u64,
    /// The pending tasks laid out, by name.
    tasks: HashMap<&'static str, u64>,
    /// Objects of interest.
    weak_set_data: u64,
    coro_inner: u64,
    /// The finished task (a torn `fut_state` makes it pending: still a real task).
    done_task: u64,
}

impl Image {
    fn alloc(&mut self, len: usize) -> u64 {
        // Room before every object for a managed dict's words (3.11+ keep them at -24, -32).
        let at = self.next + 32;
        self.next = (at + len as u64 + 15) & !15;
        assert!(self.next < HEAP + HEAP_LEN as u64, "image heap full");
        at
    }

    fn put(&mut self, at: u64, value: u64) {
        self.mem.put_u64(at, value);
    }

    fn c_string(&mut self, text: &str) -> u64 {
        let at = self.alloc(text.len() + 1);
        self.mem.write(at, text.as_bytes());
        at
    }

    fn type_obj(&mut self, name: &'static str) -> u64 {
        let ty = self.alloc(1024);
        let tp_name = self.c_string(name);
        self.put(ty + self.offsets.r#type.tp_name as u64, tp_name);
        self.types.insert(name, ty);
        ty
    }

    fn object(&mut self, type_name: &str, len: usize) -> u64 {
        let obj = self.alloc(len.max(16));
        self.put(obj, 1);
        self.put(obj + 8, self.types[type_name]);
        obj
    }

    fn str_obj(&mut self, text: &str) -> u64 {
        let u = self.offsets.unicode.clone();
        let obj = self.object("str", u.ascii_data + text.len() + 1);
        self.put(obj + u.length as u64, text.len() as u64);
        self.mem.put_i32(
            obj + u.state as u64,
            (STATE_COMPACT | STATE_ASCII | 1 << 2) as i32,
        );
        self.mem.write(obj + u.ascii_data as u64, text.as_bytes());
        obj
    }

    /// A 3.11-layout keys table of str keys (`values`: None for a shared table's).
    fn keys(&mut self, entries: &[(u64, u64)], kind: u8) -> u64 {
        let keys = self.alloc(32 + 8 + 16 * entries.len());
        self.mem.write(keys + 8, &[3, 3, kind]);
        self.put(keys + 24, entries.len() as u64);
        for (i, &(k, v)) in entries.iter().enumerate() {
            let at = keys + 40 + 16 * i as u64;
            self.put(at, k);
            self.put(at + 8, v);
        }
        keys
    }

    fn dict(&mut self, items: &[(&str, u64)]) -> u64 {
        let entries: Vec<(u64, u64)> = items.iter().map(|&(k, v)| (self.str_obj(k), v)).collect();
        let keys = self.keys(&entries, 1);
        let dict = self.object("dict", 48);
        let d = self.offsets.dict.clone();
        self.put(dict + d.ma_used as u64, items.len() as u64);
        self.put(dict + d.ma_keys as u64, keys);
        dict
    }

    fn set(&mut self, items: &[u64]) -> u64 {
        let a = self.offsets.all_tasks.clone().unwrap();
        let table = self.alloc(8 * 16);
        for (i, &item) in items.iter().enumerate() {
            // Every other slot, with a dummy-like key between.
            self.put(table + 32 * i as u64, item);
        }
        let set = self.object("set", 200);
        self.put(set + a.set_mask as u64, 7);
        self.put(set + a.set_table as u64, table);
        set
    }

    fn code(&mut self, qualname: &str, first_line: i32) -> u64 {
        let c = self.offsets.code.clone();
        let code = self.object("code", c.code_adaptive.unwrap() + 32);
        self.put(code + 16, 16); // code units
        self.mem.put_i32(code + c.firstlineno as u64, first_line);
        let file = self.str_obj("app.py");
        let name = self.str_obj(qualname);
        self.put(code + c.filename as u64, file);
        self.put(code + c.name as u64, name);
        self.put(code + c.qualname.unwrap() as u64, name);
        let table = self.object("bytes", 40);
        self.put(table + self.offsets.bytes.ob_size as u64, 0);
        self.put(code + c.linetable as u64, table);
        code
    }

    /// A coroutine suspended `awaiting` (after an await: RESUME's oparg 3) or at a plain
    /// yield (`awaiting` 0).
    fn coroutine(&mut self, qualname: &str, line: i32, awaiting: u64) -> u64 {
        let a = self.offsets.all_tasks.clone().unwrap();
        let f = self.offsets.frame.clone();
        let code = self.code(qualname, line);
        let coro = self.object("coroutine", a.gen_frame + 200);
        let qn = self.str_obj(qualname);
        self.put(coro + self.offsets.coro.qualname as u64, qn);
        let frame = coro + a.gen_frame as u64;
        self.put(frame + f.code as u64, code);
        let bytecode = code + self.offsets.code.code_adaptive.unwrap() as u64;
        // YIELD_VALUE at unit 2, RESUME at unit 3 (oparg 3 after an await, 1 after a yield).
        self.mem
            .write(bytecode + 6, &[151, if awaiting != 0 { 3 } else { 1 }]);
        self.put(frame + f.instr.unwrap() as u64, bytecode + 4);
        self.mem.put_i32(frame + a.frame_stack as u64, 1);
        self.put(frame + a.frame_localsplus.unwrap() as u64, awaiting);
        coro
    }

    fn task(&mut self, name: &str, coro: u64, state: i32) -> u64 {
        let a = self.offsets.all_tasks.clone().unwrap();
        let t = self.offsets.task.clone();
        let task = self.object("_asyncio.Task", t.task_name + 64);
        let name = self.str_obj(name);
        self.put(task + 16, 0xdead_0000); // fut_loop
        self.mem.put_i32(task + a.fut_state as u64, state);
        self.put(task + t.task_coro as u64, coro);
        self.put(task + t.task_name as u64, name);
        task
    }

    fn weakref(&mut self, to: u64) -> u64 {
        let r = self.object("weakref.ReferenceType", 64);
        self.put(r + 16, to);
        r
    }

    fn build() -> Image {
        let offsets = for_minor(12).unwrap();
        let mut mem = FakeMemory::default();
        mem.map(HEAP, vec![0u8; HEAP_LEN]);
        let mut image = Image {
            mem,
            next: HEAP,
            offsets,
            types: HashMap::new(),
            modules_ptr: 0,
            tasks: HashMap::new(),
            weak_set_data: 0,
            coro_inner: 0,
            done_task: 0,
        };
        for name in [
            "str",
            "int",
            "dict",
            "set",
            "module",
            "code",
            "bytes",
            "coroutine",
            "_asyncio.Task",
            "_asyncio.Future",
            "weakref.ReferenceType",
            "function",
            "tuple",
            "cell",
        ] {
            image.type_obj(name);
        }
        let a = image.offsets.all_tasks.clone().unwrap();
        // The future `beta` waits on, which `alpha`'s done callback holds in a closure cell
        // (gather's shape).
        let gathering = image.object("_asyncio.Future", 160);
        // alpha: outer -> inner (a plain yield).
        let inner = image.coroutine("inner", 20, 0);
        image.coro_inner = inner;
        let outer = image.coroutine("outer", 10, inner);
        let alpha = image.task("alpha", outer, 0);
        let cell = image.object("cell", 24);
        image.put(cell + 16, gathering);
        let closure = image.object("tuple", 32);
        image.put(closure + 16, 1);
        image.put(closure + 24, cell);
        let callback = image.object("function", 200);
        image.put(callback + a.func_closure as u64, closure);
        image.put(alpha + a.fut_callback0 as u64, callback);
        // beta waits on gathering; gamma waits on beta itself; delta is done.
        let beta_coro = image.coroutine("parent", 30, gathering);
        let beta = image.task("beta", beta_coro, 0);
        image.put(beta + a.task_fut_waiter as u64, gathering);
        let gamma_coro = image.coroutine("watcher", 40, 0);
        let gamma = image.task("gamma", gamma_coro, 0);
        image.put(gamma + a.task_fut_waiter as u64, beta);
        let delta_coro = image.coroutine("finished", 50, 0);
        let delta = image.task("delta", delta_coro, 2);
        image.done_task = delta;
        // The registries: a WeakSet of alpha, beta, delta; an eager set of gamma.
        let refs: Vec<u64> = [alpha, beta, delta]
            .into_iter()
            .map(|t| image.weakref(t))
            .collect();
        let data = image.set(&refs);
        image.weak_set_data = data;
        let ws_type = image.type_obj("WeakSet");
        image.put(ws_type + a.type_flags as u64, 1 << 4);
        let data_key = image.str_obj("data");
        let shared = image.keys(&[(data_key, 0)], 2);
        image.put(ws_type + a.type_cached_keys.unwrap() as u64, shared);
        let weak_set = image.object("WeakSet", 16);
        let values = image.alloc(8);
        image.put(values, data);
        image.put(weak_set - 24, values - 1);
        let eager = image.set(&[gamma]);
        let current = image.dict(&[]);
        let module_dict = image.dict(&[
            ("_current_tasks", current),
            ("_scheduled_tasks", weak_set),
            ("_eager_tasks", eager),
        ]);
        let module = image.object("module", 64);
        image.put(module + image.offsets.module.md_dict as u64, module_dict);
        let modules = image.dict(&[("sys", 0x1234_5678), ("asyncio.tasks", module)]);
        let modules_ptr = image.alloc(8);
        image.put(modules_ptr, modules);
        image.modules_ptr = modules_ptr;
        image.tasks = [("alpha", alpha), ("beta", beta), ("gamma", gamma)].into();
        image
    }

    fn list(&self, mem: &impl RemoteMemory, max: usize) -> TaskListing {
        let mut lister = TaskLister::new(mem, self.offsets.clone(), self.modules_ptr, 0).unwrap();
        lister.list(max, &[])
    }
}

fn by_name(listing: &TaskListing) -> HashMap<String, ListedTask> {
    listing
        .tasks
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect()
}

#[test]
fn the_image_is_listed_exactly() {
    let image = Image::build();
    let listing = image.list(&image.mem, 100);
    assert!(listing.asyncio);
    assert_eq!(listing.left_out, 0);
    let tasks = by_name(&listing);
    let mut names: Vec<&str> = tasks.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["alpha", "beta", "gamma"],
        "the finished task is left out"
    );
    let alpha = &tasks["alpha"];
    assert_eq!(alpha.address, image.tasks["alpha"]);
    assert_eq!(alpha.coroutine, "outer");
    let frames: Vec<(&str, &str, u32)> = alpha
        .stack
        .iter()
        .map(|f| (&*f.function, &*f.file, f.line))
        .collect();
    assert_eq!(frames, [("inner", "app.py", 20), ("outer", "app.py", 10)]);
    assert!(!alpha.stack_cut);
    assert!(!alpha.running);
    // beta awaits alpha through the closure; gamma awaits beta directly.
    assert_eq!(alpha.awaited_by, [image.tasks["beta"]]);
    assert_eq!(tasks["beta"].awaited_by, [image.tasks["gamma"]]);
    assert!(tasks["gamma"].awaited_by.is_empty());
    // beta's chain ends at the future it awaits.
    assert_eq!(tasks["beta"].stack.len(), 1);
    assert!(!tasks["beta"].stack_cut);
}

#[test]
fn the_cap_counts_what_it_leaves_out() {
    let image = Image::build();
    let listing = image.list(&image.mem, 2);
    assert_eq!(listing.tasks.len(), 2);
    assert_eq!(listing.left_out, 1);
}

#[test]
fn the_running_task_is_marked_and_not_followed() {
    let image = Image::build();
    let alpha = image.tasks["alpha"];
    let mut lister =
        TaskLister::new(&image.mem, image.offsets.clone(), image.modules_ptr, 0).unwrap();
    let listing = lister.list(100, &[alpha]);
    let tasks = by_name(&listing);
    assert!(tasks["alpha"].running);
    assert_eq!(
        tasks["alpha"].stack.len(),
        1,
        "an executing coroutine's stack says nothing"
    );
    assert!(!tasks["beta"].running);
}

#[test]
fn a_huge_set_table_is_not_read() {
    let mut image = Image::build();
    let a = image.offsets.all_tasks.clone().unwrap();
    let data = image.weak_set_data;
    image.put(data + a.set_mask as u64, (1 << 40) - 1);
    let listing = image.list(&image.mem, 100);
    let names: Vec<String> = by_name(&listing).into_keys().collect();
    assert_eq!(names, ["gamma"]);
}

#[test]
fn an_await_chain_that_loops_ends() {
    let mut image = Image::build();
    let a = image.offsets.all_tasks.clone().unwrap();
    // inner now awaits itself (RESUME oparg 3, its own address on the stack).
    let inner = image.coro_inner;
    let frame = inner + a.gen_frame as u64;
    image.put(frame + a.frame_localsplus.unwrap() as u64, inner);
    let code = image.mem.get_u64(frame);
    let bytecode = code + image.offsets.code.code_adaptive.unwrap() as u64;
    image.mem.write(bytecode + 6, &[151, 3]);
    let listing = image.list(&image.mem, 100);
    let alpha = &by_name(&listing)["alpha"];
    assert_eq!(alpha.stack.len(), 2);
    assert!(alpha.stack_cut, "a loop is no end of the chain");
}

/// Words of the heap written so far.
fn heap_words(image: &Image) -> Vec<u64> {
    (HEAP..image.next).step_by(8).collect()
}

/// The image with `n` words overwritten: with random values, with pointers into the image, or
/// zeroed.
fn torn(image: &Image, rng: &mut Rng, n: usize) -> FakeMemory {
    let words = heap_words(image);
    let mut mem = image.mem.clone();
    for _ in 0..n {
        let at = *rng.pick(&words);
        let value = match rng.below(3) {
            0 => rng.next_u64(),
            1 => *rng.pick(&words) + 8 * rng.below(4) as u64,
            _ => 0,
        };
        mem.put_u64(at, value);
    }
    mem
}

fn check_sane(image: &Image, listing: &TaskListing, reads: u64) -> Result<(), String> {
    let mut known: Vec<u64> = image.tasks.values().copied().collect();
    known.push(image.done_task);
    for t in &listing.tasks {
        if !known.contains(&t.address) {
            return Err(format!("listed {:#x}, no task of the image", t.address));
        }
        if t.stack.len() > MAX_AWAIT_DEPTH {
            return Err("an await chain past the cap".into());
        }
    }
    if reads > MAX_READS {
        return Err(format!("{reads} reads"));
    }
    Ok(())
}

#[test]
fn torn_images_give_only_real_tasks() {
    let image = Image::build();
    fuzz(12, 400, |seed| {
        let mut rng = Rng::new(seed);
        let n = 1 + rng.below(24);
        let mem = torn(&image, &mut rng, n);
        let listing = image.list(&mem, 100);
        check_sane(&image, &listing, mem.reads.get())
    });
}

#[test]
fn random_memory_gives_no_task_on_every_version() {
    for minor in [8, 9, 10, 11, 12, 13] {
        let offsets = for_minor(minor).unwrap();
        fuzz(minor, 150, |seed| {
            let mut rng = Rng::new(seed);
            let mut mem = FakeMemory::default();
            let mut data = vec![0u8; 1 << 16];
            for chunk in data.chunks_exact_mut(8) {
                let word = match rng.below(3) {
                    0 => HEAP + rng.below(1 << 16) as u64,
                    1 => rng.below(300) as u64,
                    _ => rng.next_u64(),
                };
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            mem.map(HEAP, data);
            let modules_ptr = HEAP + 8 * rng.below(1 << 13) as u64;
            let mut lister = TaskLister::new(&mem, offsets.clone(), modules_ptr, 0).unwrap();
            let listing = lister.list(100, &[]);
            if !listing.tasks.is_empty() {
                return Err(format!("{} tasks from random memory", listing.tasks.len()));
            }
            if mem.reads.get() > MAX_READS {
                return Err(format!("{} reads", mem.reads.get()));
            }
            Ok(())
        });
    }
}

#[test]
fn memory_changing_mid_listing_gives_only_real_tasks() {
    let image = Image::build();
    fuzz(12, 300, |seed| {
        let mut rng = Rng::new(seed);
        let n = 1 + rng.below(16);
        let changed = torn(&image, &mut rng, n);
        let mut schedule: Vec<(u64, Change)> = image
            .mem
            .diff(&changed)
            .into_iter()
            .map(|c| (1 + rng.below(200) as u64, c))
            .collect();
        schedule.sort_by_key(|(at, _)| *at);
        let mem = ShiftingMemory {
            mem: std::cell::RefCell::new(image.mem.clone()),
            reads: std::cell::Cell::new(0),
            schedule: std::cell::RefCell::new(schedule),
        };
        let listing = image.list(&mem, 100);
        check_sane(&image, &listing, mem.reads.get())
    });
}
