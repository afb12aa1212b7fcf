//! A loop's busy time over the whole recording, in a fixed number of bins: what a timeline
//! draws (report.html). Busy spans themselves are unbounded in number (one per loop
//! iteration), so they are added into bins as they close; when the recording outgrows the
//! bins, neighbours are merged and the bin width doubles. An hour costs what a second costs.

/// Bins kept at most: about one per pixel of a wide timeline.
pub const MAX_BINS: usize = 4096;
/// The narrowest bin, seconds: finer than a 1 kHz sampler can tell busy from idle.
const FIRST_BIN_S: f64 = 0.001;

/// Busy seconds per bin, from the start of the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyBins {
    /// Width of one bin, seconds: [`FIRST_BIN_S`] times a power of two.
    pub bin_s: f64,
    /// Busy seconds in each bin (never more than `bin_s`), the first one starting with the
    /// recording's first sample.
    pub busy_s: Vec<f64>,
}

impl Default for BusyBins {
    fn default() -> Self {
        BusyBins {
            bin_s: FIRST_BIN_S,
            busy_s: Vec::new(),
        }
    }
}

impl BusyBins {
    /// Adds a busy span from `start_s` to `end_s`, seconds since the recording's start.
    pub fn add(&mut self, start_s: f64, end_s: f64) {
        if !start_s.is_finite() || !end_s.is_finite() || end_s <= start_s {
            return;
        }
        let start_s = start_s.max(0.0);
        while end_s > self.bin_s * MAX_BINS as f64 {
            self.coarsen();
        }
        let last = ((end_s / self.bin_s) as usize).min(MAX_BINS - 1);
        if self.busy_s.len() <= last {
            self.busy_s.resize(last + 1, 0.0);
        }
        let first = (start_s / self.bin_s) as usize;
        for (i, bin) in self
            .busy_s
            .iter_mut()
            .enumerate()
            .take(last + 1)
            .skip(first)
        {
            let from = (i as f64 * self.bin_s).max(start_s);
            let to = ((i + 1) as f64 * self.bin_s).min(end_s);
            if to > from {
                *bin = (*bin + (to - from)).min(self.bin_s);
            }
        }
    }

    /// Merges neighbouring bins: twice as wide, half as many.
    fn coarsen(&mut self) {
        self.busy_s = self
            .busy_s
            .chunks(2)
            .map(|pair| pair.iter().sum())
            .collect();
        self.bin_s *= 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_span_is_spread_over_the_bins_it_covers() {
        let mut bins = BusyBins::default();
        bins.add(0.0005, 0.0025);
        assert_eq!(bins.busy_s.len(), 3);
        assert!(close(bins.busy_s[0], 0.0005));
        assert!(close(bins.busy_s[1], 0.001));
        assert!(close(bins.busy_s[2], 0.0005));
    }

    #[test]
    fn a_long_recording_stays_within_the_bins_and_keeps_its_busy_time() {
        let mut bins = BusyBins::default();
        let mut total = 0.0;
        // A day of 10 ms stalls every second.
        for s in (0..86_400).step_by(7) {
            bins.add(s as f64, s as f64 + 0.01);
            total += 0.01;
        }
        assert!(bins.busy_s.len() <= MAX_BINS);
        assert!(bins.bin_s * MAX_BINS as f64 >= 86_400.0);
        let kept: f64 = bins.busy_s.iter().sum();
        assert!((kept - total).abs() < 1e-6, "{kept} vs {total}");
    }

    #[test]
    fn nonsense_spans_are_ignored() {
        let mut bins = BusyBins::default();
        bins.add(2.0, 1.0);
        bins.add(f64::NAN, 1.0);
        bins.add(0.0, f64::INFINITY);
        assert!(bins.busy_s.is_empty());
        assert_eq!(bins.bin_s, FIRST_BIN_S);
    }
}
