//! `profile.speedscope.json`: the busy-loop and blocking profiles in speedscope's file format
//! (https://www.speedscope.app/file-format-schema.json), one sampled profile per thread and
//! kind, weighted in microseconds. Frames are shared: index = loopspy's frame id.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::RecordingInfo;
use crate::analyzer::{Analysis, Profile};

fn profiles(analysis: &Analysis, profile: &Profile, kind: &str, out: &mut Vec<Value>) {
    let mut by_thread: BTreeMap<u64, Vec<(Vec<u32>, u64)>> = BTreeMap::new();
    for (&(tid, stack), &us) in profile {
        if us == 0 {
            continue;
        }
        // speedscope stacks run from the root to the leaf; ours are leaf first.
        let mut frames: Vec<u32> = analysis.symbols.stacks.get(stack).clone();
        frames.reverse();
        by_thread.entry(tid).or_default().push((frames, us));
    }
    for (tid, mut samples) in by_thread {
        samples.sort();
        let total: u64 = samples.iter().map(|(_, us)| us).sum();
        let name = analysis
            .thread_names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| "thread".into());
        out.push(json!({
            "type": "sampled",
            "name": format!("{kind}: {name} ({tid})"),
            "unit": "microseconds",
            "startValue": 0,
            "endValue": total,
            "samples": samples.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            "weights": samples.iter().map(|(_, us)| us).collect::<Vec<_>>(),
        }));
    }
}

/// The document.
pub fn document(analysis: &Analysis, info: &RecordingInfo) -> Value {
    let frames: Vec<Value> = (0..analysis.symbols.frames.len() as u32)
        .map(|id| {
            let f = analysis.symbols.frames.get(id);
            json!({ "name": f.function, "file": f.file, "line": f.line })
        })
        .collect();
    let mut list = Vec::new();
    if analysis.loops.is_empty() {
        profiles(analysis, &analysis.active_profile, "running", &mut list);
    } else {
        profiles(
            analysis,
            &analysis.busy_profile,
            "event loop busy",
            &mut list,
        );
        profiles(
            analysis,
            &analysis.blocking_profile,
            "blocking incidents",
            &mut list,
        );
    }
    json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": { "frames": frames },
        "profiles": list,
        "name": format!("loopspy: pid {} ({})", info.pid, info.command),
        "activeProfileIndex": 0,
        "exporter": concat!("loopspy ", env!("CARGO_PKG_VERSION")),
    })
}

/// Writes `path`.
pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec(&document(analysis, info))?)?;
    Ok(())
}
