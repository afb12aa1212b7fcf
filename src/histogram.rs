//! One histogram for every distribution loopspy reports: sampling intervals (µs), stall
//! lengths (ms), per-site incident durations (ms). Fixed linear buckets of one unit up to a
//! limit plus one overflow bucket, so hours of data cost constant memory, and one
//! nearest-rank quantile rule for all of them (and for a plain list of values).

/// Counts of whole-unit values `0..=limit` (larger ones land in the last bucket).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u32>,
    /// Values recorded.
    pub count: u64,
    /// Largest value recorded, unclamped.
    pub max: f64,
    /// Sum of the values recorded, unclamped (a Prometheus histogram's `_sum`).
    pub sum: f64,
}

impl Histogram {
    /// Buckets for whole values up to `limit`.
    pub fn new(limit: usize) -> Self {
        Histogram {
            buckets: vec![0; limit + 1],
            count: 0,
            max: 0.0,
            sum: 0.0,
        }
    }

    /// Adds one value (negative ones count as 0).
    pub fn record(&mut self, value: f64) {
        self.count += 1;
        self.max = self.max.max(value);
        self.sum += value.max(0.0);
        let idx = (value.max(0.0) as usize).min(self.buckets.len() - 1);
        self.buckets[idx] = self.buckets[idx].saturating_add(1);
    }

    /// Values recorded below `limit + 1` (whole units: a value counts in the bucket of its
    /// whole part). The overflow bucket's values are never counted: they may lie above `limit`.
    pub fn count_at_most(&self, limit: f64) -> u64 {
        if limit < 0.0 {
            return 0;
        }
        let end = (limit as usize).min(self.buckets.len() - 2);
        self.buckets[..=end].iter().map(|&n| n as u64).sum()
    }

    /// Nearest-rank quantile `q` (0..=1), in whole units; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts = self
            .buckets
            .iter()
            .enumerate()
            .map(|(value, &n)| (value as u64, n as u64));
        nearest_rank(counts, self.count, q).unwrap_or(0)
    }
}

/// The nearest-rank quantile `q` of `total` values given as (value, count) pairs in ascending
/// order of value: the smallest value with at least `ceil(q * total)` values at or below it.
pub fn nearest_rank<T: Copy>(
    counts: impl IntoIterator<Item = (T, u64)>,
    total: u64,
    q: f64,
) -> Option<T> {
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    let mut last = None;
    for (value, n) in counts {
        seen += n;
        last = Some(value);
        if seen >= want {
            return Some(value);
        }
    }
    last
}

/// The nearest-rank quantile of a sorted list.
pub fn quantile_of_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    nearest_rank(sorted.iter().map(|&v| (v, 1)), sorted.len() as u64, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_most_a_limit_and_sums() {
        let mut h = Histogram::new(100);
        for v in [0.5, 3.0, 3.9, 50.0, 99.0, 250.0] {
            h.record(v);
        }
        assert_eq!(h.count_at_most(-1.0), 0);
        assert_eq!(h.count_at_most(0.0), 1);
        assert_eq!(h.count_at_most(3.0), 3);
        assert_eq!(h.count_at_most(99.0), 5);
        // 250 sits in the overflow bucket with anything >= 100: never under a limit.
        assert_eq!(h.count_at_most(1_000.0), 5);
        assert_eq!(h.count, 6);
        assert!((h.sum - 406.4).abs() < 1e-9);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut h = Histogram::new(100_000);
        for us in 1..=100 {
            h.record(us as f64);
        }
        h.record(500_000.0);
        assert_eq!(h.quantile(0.5), 51);
        assert_eq!(h.max, 500_000.0);
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(Histogram::new(10).quantile(0.5), 0);
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_of_sorted(&sorted, 0.5), Some(2.0));
        assert_eq!(quantile_of_sorted(&sorted, 0.99), Some(4.0));
        assert_eq!(quantile_of_sorted(&[], 0.5), None);
    }
}
