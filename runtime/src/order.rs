//! Decoding-order diagnostics of docs/model.md §6 (AR-ness). The commit sequence is the positions in
//! the order they were committed (within one step, by increasing position).

/// Local AR-ness@k: the fraction of commits whose k previously committed positions are exactly
/// the k positions immediately to its left, in order.
pub fn local_ar_ness(order: &[usize], k: usize) -> f64 {
    if order.len() <= k || k == 0 {
        return 0.0;
    }
    let hits = (k..order.len())
        .filter(|&t| (1..=k).all(|j| order[t - j] + j == order[t]))
        .count();
    hits as f64 / (order.len() - k) as f64
}

/// Global AR-ness@k: the fraction of commits that take one of the k leftmost positions still
/// masked at that moment.
pub fn global_ar_ness(order: &[usize], k: usize) -> f64 {
    if order.is_empty() || k == 0 {
        return 0.0;
    }
    let mut remaining: Vec<usize> = order.to_vec();
    remaining.sort_unstable();
    let mut hits = 0;
    for &p in order {
        let rank = remaining.iter().position(|&q| q == p).unwrap_or(usize::MAX);
        if rank < k {
            hits += 1;
        }
        if rank != usize::MAX {
            remaining.remove(rank);
        }
    }
    hits as f64 / order.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_to_right_is_fully_autoregressive() {
        let order: Vec<usize> = (10..30).collect();
        assert_eq!(local_ar_ness(&order, 1), 1.0);
        assert_eq!(local_ar_ness(&order, 3), 1.0);
        assert_eq!(global_ar_ness(&order, 1), 1.0);
    }

    #[test]
    fn right_to_left_is_not() {
        let order: Vec<usize> = (10..30).rev().collect();
        assert_eq!(local_ar_ness(&order, 1), 0.0);
        assert_eq!(global_ar_ness(&order, 1), 1.0 / 20.0);
        assert_eq!(global_ar_ness(&order, 20), 1.0);
    }
}
