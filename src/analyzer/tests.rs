//! The analyzer fed made-up samples: incidents kept and counted, runs split and closed.
use super::*;
use crate::sample::{Frame, HandleIndex, ThreadSample};

fn frame(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 1,
    }
}

fn sample(at: Instant, busy_in: Option<&str>) -> SamplerMessage {
    let base = "/py/lib/python3.12/asyncio/base_events.py";
    let mut frames = vec![
        frame("BaseEventLoop._run_once", base),
        frame("<module>", "/app/app.py"),
    ];
    match busy_in {
        Some(function) => {
            frames.insert(
                0,
                frame("Handle._run", "/py/lib/python3.12/asyncio/events.py"),
            );
            frames.insert(0, frame(function, "/app/app.py"));
        }
        None => frames.insert(
            0,
            frame("EpollSelector.select", "/py/lib/python3.12/selectors.py"),
        ),
    }
    SamplerMessage::Sample(Sample {
        pid: 1,
        at,
        unix: 0.0,
        running_tasks: vec![],
        task_generation: None,
        threads: vec![ThreadSample {
            os_tid: 1,
            python_tid: 1,
            name: Some("MainThread".into()),
            frames,
            os_state: OsState::Running,
            owns_gil: true,
            every: 1,
            truncated: false,
            context_ver: None,
            handle_index: None,
            clock_after: None,
            ns_tid: None,
            counters: None,
        }],
    })
}

#[test]
fn keeps_the_worst_incidents_and_counts_all() {
    let mut analyzer = Analyzer::new(AnalyzerSettings {
        threshold: Duration::from_millis(50),
        interval: Duration::from_millis(1),
        only_thread: None,
        pid: std::process::id() as i32,
        max_incidents: 2,
        stream: true,
        timeline: true,
    });
    let mut t = Instant::now();
    let ms = Duration::from_millis(1);
    for (n, length) in [60u32, 100, 70, 90, 80].into_iter().enumerate() {
        for _ in 0..10 {
            analyzer.feed(sample(t, None));
            t += ms;
        }
        let name = format!("handler{n}");
        for _ in 0..length {
            analyzer.feed(sample(t, Some(&name)));
            t += ms;
        }
    }
    analyzer.feed(sample(t, None));
    assert_eq!(
        analyzer.take_closed().len(),
        5,
        "every incident is streamed"
    );
    let analysis = analyzer.finish();
    assert_eq!(analysis.incidents_total, 5);
    let kept: Vec<f64> = analysis
        .incidents
        .iter()
        .map(|i| i.duration_ms.round())
        .collect();
    assert_eq!(kept, vec![100.0, 90.0], "the two longest are kept");
    assert_eq!(analysis.sites.len(), 5, "every site is counted");
    assert!(
        (analysis.blocked_ms() - 400.0).abs() < 1.0,
        "{}",
        analysis.blocked_ms()
    );
    assert_eq!(analysis.timeline.len(), 5);
}

/// `sample` with `task` (its address) being stepped under table generation `generation`.
fn with_task(message: SamplerMessage, task: Option<u64>, generation: u64) -> SamplerMessage {
    let SamplerMessage::Sample(mut s) = message else {
        unreachable!()
    };
    s.running_tasks = task
        .map(|address| RunningTask {
            address,
            name: "Task-1".into(),
            coroutine: "handler".into(),
        })
        .into_iter()
        .collect();
    s.task_generation = Some(TaskGeneration {
        keys: 7,
        entries: generation,
    });
    SamplerMessage::Sample(s)
}

fn gap_settings() -> AnalyzerSettings {
    AnalyzerSettings {
        threshold: Duration::from_millis(50),
        interval: Duration::from_millis(1),
        only_thread: None,
        pid: std::process::id() as i32,
        max_incidents: 10,
        stream: false,
        timeline: false,
    }
}

/// 30 ms busy in `handler`, a 40 ms sampling gap, 30 ms busy again, then idle: what comes of it
/// when the samples after the gap are in generation `after`, with or without a task.
fn across_a_gap(task: Option<u64>, after: u64) -> Vec<f64> {
    let mut analyzer = Analyzer::new(gap_settings());
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    analyzer.feed(with_task(sample(ms(0), None), None, 1));
    for n in 1..=30 {
        analyzer.feed(with_task(sample(ms(n), Some("handler")), task, 2));
    }
    for n in 70..=100 {
        analyzer.feed(with_task(sample(ms(n), Some("handler")), task, after));
    }
    analyzer.feed(with_task(sample(ms(101), None), None, after + 1));
    let analysis = analyzer.finish();
    assert_eq!(analysis.gaps.count, 1);
    analysis.incidents.iter().map(|i| i.duration_ms).collect()
}

#[test]
fn a_sampling_gap_is_bridged_only_when_the_same_task_step_went_on() {
    // The same task, the running-task table untouched: one step went on through the gap.
    let bridged = across_a_gap(Some(0xabc), 2);
    assert_eq!(bridged.len(), 1, "{bridged:?}");
    assert!((bridged[0] - 100.0).abs() <= 2.0, "{bridged:?}");
    // The table changed (another step ran), or no task to prove it: two short runs, no
    // incident made of the gap.
    assert!(across_a_gap(Some(0xabc), 3).is_empty());
    assert!(across_a_gap(None, 2).is_empty());
}

/// `sample` read with the thread's callback clock at `clock`, stepping the task at `task`.
fn with_clock(message: SamplerMessage, task: Option<u64>, clock: u64) -> SamplerMessage {
    let SamplerMessage::Sample(mut s) = with_task(message, task, 1) else {
        unreachable!()
    };
    s.threads[0].context_ver = Some(clock);
    // Read again after the task: unchanged, the task read is the callback's.
    s.threads[0].clock_after = Some(clock);
    SamplerMessage::Sample(s)
}

/// `message` whose task read came after its callback ended (the clock read after it moved).
fn task_read_late(message: SamplerMessage) -> SamplerMessage {
    let SamplerMessage::Sample(mut s) = message else {
        unreachable!()
    };
    s.threads[0].clock_after = s.threads[0].context_ver.map(|c| c + 2);
    SamplerMessage::Sample(s)
}

/// A task stepping every `step_ms` (its callback clock +2 a step) with no sample ever seen
/// idle between steps, as a loaded sampler sees a cooperative task: the incidents it makes.
fn cooperative_steps(step_ms: u64) -> Vec<f64> {
    let mut analyzer = Analyzer::new(gap_settings());
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    analyzer.feed(with_clock(sample(ms(0), None), None, 1));
    for n in 1..=300 {
        // Sampled every 2 ms while steps take `step_ms`: an aliasing sampler can see every
        // other step only, which handle addresses (reused two steps apart) cannot tell apart.
        let clock = 2 * (n / step_ms);
        if n % 2 == 0 {
            analyzer.feed(with_clock(
                sample(ms(n), Some("handler")),
                Some(0xabc),
                clock,
            ));
        }
    }
    analyzer.feed(with_clock(sample(ms(301), None), None, 1_000));
    let analysis = analyzer.finish();
    analysis.incidents.iter().map(|i| i.duration_ms).collect()
}

#[test]
fn a_task_stepping_every_millisecond_is_no_incident_when_its_callback_clock_moves() {
    assert!(cooperative_steps(1).is_empty());
    // The same clock throughout (one step held the loop) is one incident of the whole span.
    let one = cooperative_steps(1_000);
    assert_eq!(one.len(), 1, "{one:?}");
    assert!((one[0] - 300.0).abs() <= 2.0, "{one:?}");
}

#[test]
fn a_task_read_after_its_callback_ended_does_not_split_a_saturation() {
    // Many tasks of one coroutine, stepped back to back in one iteration (3 steps a ms), never
    // idle. Every other sample reads the running task late: the next task already, which the
    // next sample then catches (a slow step). Seen as the same task under two clocks, it split
    // a real saturation in two; only task reads the clock proved may say "stepped again".
    let mut analyzer = Analyzer::new(gap_settings());
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    analyzer.feed(with_clock(sample(ms(0), None), None, 1));
    for n in (2..=300).step_by(2) {
        let step = 3 * n;
        let message = if n % 4 == 2 {
            // Frames of step `step`, task read: the next step's task.
            task_read_late(with_clock(
                sample(ms(n), Some("tiny")),
                Some(0x1000 + step + 1),
                2 * step,
            ))
        } else {
            // That next task, still running (the clock moved once since).
            let late = 3 * (n - 2) + 1;
            with_clock(sample(ms(n), Some("tiny")), Some(0x1000 + late), 2 * late)
        };
        analyzer.feed(message);
    }
    analyzer.feed(with_clock(sample(ms(301), None), None, 10_000));
    let analysis = analyzer.finish();
    let durations: Vec<f64> = analysis.incidents.iter().map(|i| i.duration_ms).collect();
    assert_eq!(durations.len(), 1, "{durations:?}");
    assert!((durations[0] - 300.0).abs() <= 2.0, "{durations:?}");
}

/// Short callbacks of many tasks for 300 ms, never seen idle, sampled every 2 ms with
/// `_run_once`'s handle index: `iteration_of(ms)` says which iteration a sample is in, each
/// iteration running 20 handles a millisecond (clock +2 each). The incidents made.
fn indexed_run(iteration_ms: u64) -> Vec<f64> {
    let mut analyzer = Analyzer::new(gap_settings());
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // Idle in its selector: the clock's "outside a handle" parity (odd here).
    for n in 0..3 {
        analyzer.feed(with_clock(
            sample(t0 - Duration::from_millis(3 - n), None),
            None,
            1,
        ));
    }
    analyzer.feed(with_clock(sample(ms(0), None), None, 1));
    for n in (2..=300).step_by(2) {
        let (iteration, into) = (n / iteration_ms, n % iteration_ms);
        // Each iteration runs 20 * iteration_ms handles; this sample is `into` ms into it.
        let index = 20 * into;
        let clock = 1 + 2 * (20 * iteration_ms * iteration + index) + 1;
        let SamplerMessage::Sample(mut s) =
            with_clock(sample(ms(n), Some("handler")), Some(0x1000 + n), clock)
        else {
            unreachable!()
        };
        s.threads[0].handle_index = Some(HandleIndex { index, clock });
        analyzer.feed(SamplerMessage::Sample(s));
    }
    analyzer.feed(with_clock(sample(ms(301), None), None, 100_000));
    let analysis = analyzer.finish();
    analysis.incidents.iter().map(|i| i.duration_ms).collect()
}

#[test]
fn the_handle_index_and_the_clock_tell_iterations_apart() {
    // One 300 ms iteration: one saturation.
    let one = indexed_run(1_000);
    assert_eq!(one.len(), 1, "{one:?}");
    assert!((one[0] - 300.0).abs() <= 2.0, "{one:?}");
    // 40 ms iterations back to back: each under the threshold, none an incident.
    assert!(indexed_run(40).is_empty(), "{:?}", indexed_run(40));
    // 100 ms iterations: three saturations, cut where the index went back.
    let three = indexed_run(100);
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(three.iter().all(|d| (d - 100.0).abs() <= 3.0), "{three:?}");
}

#[test]
fn the_callback_clock_bridges_a_sampling_gap_only_when_unchanged() {
    let run = |after: u64| {
        let mut analyzer = Analyzer::new(gap_settings());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        analyzer.feed(with_clock(sample(ms(0), None), None, 1));
        for n in 1..=30 {
            analyzer.feed(with_clock(sample(ms(n), Some("handler")), Some(0xabc), 2));
        }
        for n in 70..=100 {
            analyzer.feed(with_clock(
                sample(ms(n), Some("handler")),
                Some(0xabc),
                after,
            ));
        }
        analyzer.feed(with_clock(sample(ms(101), None), None, after + 1));
        let analysis = analyzer.finish();
        analysis
            .incidents
            .iter()
            .map(|i| i.duration_ms)
            .collect::<Vec<_>>()
    };
    let bridged = run(2);
    assert_eq!(bridged.len(), 1, "{bridged:?}");
    assert!((bridged[0] - 100.0).abs() <= 2.0, "{bridged:?}");
    assert!(run(4).is_empty(), "another step ran in the gap");
}

/// `message` carrying a kernel reading: `system_ticks` in the kernel so far, `written` bytes.
fn with_counters(message: SamplerMessage, system_ticks: u64, written: u64) -> SamplerMessage {
    let SamplerMessage::Sample(mut s) = message else {
        unreachable!()
    };
    s.threads[0].counters = Some(crate::sample::ThreadCounters {
        user_ticks: 0,
        system_ticks,
        read_chars: 0,
        written_chars: written,
        storage_written: written,
        busiest_file: None,
        schedstat: None,
    });
    SamplerMessage::Sample(s)
}

/// `message` read torn (frames cut short, no loop in them) while the kernel has the thread
/// waiting in epoll.
fn torn_in_epoll(message: SamplerMessage) -> SamplerMessage {
    let SamplerMessage::Sample(mut s) = message else {
        unreachable!()
    };
    let thread = &mut s.threads[0];
    thread.frames.truncate(1);
    thread.frames[0] = frame("<listcomp>", "/app/app.py");
    thread.os_state = OsState::Waiting {
        syscall: Some(crate::sample::Syscall {
            nr: 232,
            args: [0; 6],
        }),
        resource: None,
    };
    SamplerMessage::Sample(s)
}

#[test]
fn the_sample_that_ends_a_run_closes_its_kernel_counts_however_it_ends() {
    // A 256 MB write() into the page cache: 300 ms in the kernel, its bytes counted only when
    // it returns. The reading taken with the sample that ends the run is the only one that
    // has them — and the run ends in one of four ways.
    let endings = [
        "back in the selector",
        "a torn read, waiting in epoll",
        "the next callback's clock",
        "a sampling gap",
    ];
    for (n, ending) in endings.into_iter().enumerate() {
        let mut analyzer = Analyzer::new(gap_settings());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        analyzer.feed(with_clock(sample(ms(0), None), None, 1));
        for t in 1..=300 {
            let message = with_clock(sample(ms(t), Some("save_upload")), Some(0xabc), 4);
            let message = match t {
                1 => with_counters(message, 0, 1_000),
                150 => with_counters(message, 15, 1_000),
                _ => message,
            };
            analyzer.feed(message);
        }
        let end = match n {
            0 => with_clock(sample(ms(301), None), None, 5),
            1 => torn_in_epoll(with_clock(sample(ms(301), None), None, 5)),
            2 => with_clock(sample(ms(301), Some("other")), Some(0xdef), 6),
            _ => with_clock(sample(ms(340), Some("other")), Some(0xdef), 6),
        };
        analyzer.feed(with_counters(end, 30, 256_001_000));
        analyzer.feed(with_clock(sample(ms(400), None), None, 7));
        let analysis = analyzer.finish();
        let incident = &analysis.incidents[0];
        let kernel = incident.cause.kernel.as_ref().expect("counts");
        assert_eq!(
            (incident.cause.category, kernel.written_bytes),
            ("file", 256_000_000),
            "{ending}: {}",
            incident.cause.detail
        );
    }
}

#[test]
fn incident_times_follow_a_wall_clock_that_steps() {
    // The wall clock steps 1.4 s forward between two incidents (a guest's clock resynced):
    // each incident is timed by the wall clock of its own samples, as the target's
    // time.time() would time it.
    let mut analyzer = Analyzer::new(gap_settings());
    let t0 = Instant::now();
    let step = |n: u64| if n >= 500 { 1.4 } else { 0.0 };
    for n in 0..1_000u64 {
        let busy = (100..200).contains(&n) || (700..800).contains(&n);
        let SamplerMessage::Sample(mut s) =
            sample(t0 + Duration::from_millis(n), busy.then_some("handler"))
        else {
            unreachable!()
        };
        s.unix = 1_000.0 + n as f64 / 1000.0 + step(n);
        analyzer.feed(SamplerMessage::Sample(s));
    }
    let analysis = analyzer.finish();
    let mut starts: Vec<f64> = analysis.incidents.iter().map(|i| i.start_unix).collect();
    starts.sort_by(f64::total_cmp);
    assert_eq!(starts.len(), 2);
    assert!((starts[0] - 1_000.099_5).abs() < 0.002, "{starts:?}");
    assert!((starts[1] - 1_002.099_5).abs() < 0.002, "{starts:?}");
}
