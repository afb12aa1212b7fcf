//! The layer rule of docs/how-it-works.md, checked on the code itself: every `crate::<module>`
//! a file names must be a module of a lower layer (or its own). A new import that runs back up
//! (the sampler naming the analyzer, the reader naming the sampler) fails here.

use std::collections::BTreeMap;
use std::path::Path;

/// Top-level modules by layer, lowest first (docs/how-it-works.md's table).
const LAYERS: &[(&str, u32)] = &[
    ("sample", 0),
    ("syscalls", 0),
    ("histogram", 0),
    ("error", 0),
    ("text", 1),
    ("remote", 1),
    ("sampler", 2),
    ("analyzer", 2),
    ("output", 3),
    ("session", 3),
    ("view", 4),
    ("record", 4),
    ("dump", 4),
    ("agent", 4),
    ("cli", 5),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a source file belongs to (`src/remote/stacks.rs` -> `remote`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for file in files {
        let module = module_of(&file, &src);
        let Some(own) = layer(&module) else {
            // lib.rs, main.rs and this test sit above every layer.
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        // Only the code, not its tests (a test may build whatever it needs).
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(theirs) = layer(&name) else { continue };
            checked += 1;
            if name != module && theirs >= own {
                wrong
                    .entry(format!("{} (layer {own})", file.display()))
                    .or_default()
                    .push(format!("{name} (layer {theirs})"));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports seen: is the scan broken?"
    );
    assert!(wrong.is_empty(), "imports that run back up: {wrong:#?}");
}
