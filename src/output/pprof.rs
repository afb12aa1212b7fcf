//! `profile.pb.gz`: the recording as a gzipped pprof profile (the `profile.proto` of
//! github.com/google/pprof), which `go tool pprof`, Pyroscope, Grafana and OpenTelemetry's
//! converters read.
//!
//! Three sample types: `samples`/count and `wall`/microseconds of the event loops' busy time
//! (the default: what `flamegraph.svg` shows; threads that run no loop when none was found),
//! and `blocked`/microseconds: each incident's own stacks, labelled with the incident's `id`
//! (as in incidents.json), `cause`, `kind` and `site` — zero in the other two types, so no
//! time is counted twice (`-sample_index=blocked -tagfocus=cause=sleep`). Every sample has
//! `thread` and `thread_id` labels.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use prost::Message;

use super::RecordingInfo;
use crate::analyzer::{Analysis, Profile};

/// The messages of profile.proto loopspy writes (field numbers as published).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// The profile being built: interned strings, functions and locations.
struct Builder<'a> {
    analysis: &'a Analysis,
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    /// (function, file) -> function id.
    functions: HashMap<(i64, i64), u64>,
    /// loopspy frame id -> location id.
    locations: HashMap<u32, u64>,
}

impl<'a> Builder<'a> {
    fn new(analysis: &'a Analysis) -> Self {
        let mut b = Builder {
            analysis,
            profile: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        b.string(""); // string_table[0] is "" by the format's rule
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, frame_id: u32) -> u64 {
        if let Some(&id) = self.locations.get(&frame_id) {
            return id;
        }
        let frame = self.analysis.symbols.frames.get(frame_id);
        let (name, file) = (self.string(&frame.function), self.string(&frame.file));
        let next_function = self.functions.len() as u64 + 1;
        let function_id = *self.functions.entry((name, file)).or_insert(next_function);
        if function_id == next_function {
            self.profile.function.push(proto::Function {
                id: function_id,
                name,
                system_name: name,
                filename: file,
            });
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            line: vec![proto::Line {
                function_id,
                line: frame.line as i64,
            }],
        });
        self.locations.insert(frame_id, id);
        id
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
        }
    }

    /// One sample of `stack` (leaf first, as pprof wants it) in thread `tid`.
    fn sample(&mut self, tid: u64, stack: u32, value: [i64; 3], extra: &[(&str, String)]) {
        let frames = self.analysis.symbols.stacks.get(stack).clone();
        let location_id = frames.iter().map(|&f| self.location(f)).collect();
        let name = self
            .analysis
            .thread_names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| "thread".into());
        let mut label = vec![
            self.label("thread", &name),
            proto::Label {
                key: self.string("thread_id"),
                str: 0,
                num: tid as i64,
            },
        ];
        for (key, value) in extra {
            label.push(self.label(key, value));
        }
        self.profile.sample.push(proto::Sample {
            location_id,
            value: value.to_vec(),
            label,
        });
    }

    fn profile_samples(&mut self, profile: &Profile, interval_us: u64) {
        let mut entries: Vec<(&(u64, u32), &u64)> = profile.iter().collect();
        entries.sort_unstable();
        for (&(tid, stack), &us) in entries {
            if us == 0 {
                continue;
            }
            let count = us.div_ceil(interval_us.max(1));
            self.sample(tid, stack, [count as i64, us as i64, 0], &[]);
        }
    }
}

/// The profile of a recording, before encoding.
fn build(analysis: &Analysis, info: &RecordingInfo, interval_us: u64) -> proto::Profile {
    let mut b = Builder::new(analysis);
    let types = [
        ("samples", "count"),
        ("wall", "microseconds"),
        ("blocked", "microseconds"),
    ];
    b.profile.sample_type = types
        .iter()
        .map(|(t, u)| proto::ValueType {
            r#type: b.string(t),
            unit: b.string(u),
        })
        .collect();
    b.profile.default_sample_type = b.profile.sample_type[1].r#type;
    b.profile.period_type = Some(proto::ValueType {
        r#type: b.string("wall"),
        unit: b.string("microseconds"),
    });
    b.profile.period = interval_us as i64;
    b.profile.time_nanos = (info.start_unix * 1e9) as i64;
    b.profile.duration_nanos = info.sampler.elapsed.as_nanos().min(i64::MAX as u128) as i64;
    let comment = format!(
        "loopspy {}: pid {} ({}), Python {}",
        env!("CARGO_PKG_VERSION"),
        info.pid,
        crate::text::name(&info.command),
        info.python_version
    );
    let comment = b.string(&comment);
    b.profile.comment.push(comment);
    if analysis.loops.is_empty() {
        b.profile_samples(&analysis.active_profile, interval_us);
    } else {
        b.profile_samples(&analysis.busy_profile, interval_us);
    }
    for incident in &analysis.incidents {
        let culprit = analysis.symbols.frames.get(incident.culprit);
        let extra = [
            ("incident", incident.id()),
            ("cause", incident.cause.category.to_string()),
            ("kind", format!("{:?}", incident.kind).to_lowercase()),
            ("site", crate::text::frame_label(culprit, false)),
        ];
        for &(stack, us) in &incident.stack_weights_us {
            b.sample(incident.thread_id, stack, [0, 0, us as i64], &extra);
        }
    }
    b.profile
}

/// Writes `path`: the profile, protobuf-encoded and gzipped.
pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    let interval_us = (1_000_000 / info.rate_hz.max(1)) as u64;
    let bytes = build(analysis, info, interval_us).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes)?;
    std::fs::write(path, gz.finish()?)?;
    Ok(())
}
