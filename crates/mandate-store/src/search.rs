//! Rules both backends share.

use crate::Result;

/// The first sequence number in `(from, head]` whose event is at or after
/// `t` (ms), by binary search: `time_at(seq)` is the time of the first event
/// at or after `seq` (`i64::MAX` past the end), and times do not go back
/// after `from` (the trail's last time step). `None` when there is none.
pub(crate) fn first_at_or_after(
    from: u64,
    head: u64,
    t: u64,
    mut time_at: impl FnMut(u64) -> Result<i64>,
) -> Result<Option<u64>> {
    if head <= from {
        return Ok(None);
    }
    let t = i64::try_from(t).unwrap_or(i64::MAX);
    if time_at(head)? < t {
        return Ok(None);
    }
    let (mut lo, mut hi) = (from + 1, head);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if time_at(mid)? >= t {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_event_at_or_after_a_time() {
        let times = [10i64, 20, 20, 30, 40];
        let at = |seq: u64| Ok(times.get(seq as usize - 1).copied().unwrap_or(i64::MAX));
        assert_eq!(first_at_or_after(0, 5, 20, at).unwrap(), Some(2));
        assert_eq!(first_at_or_after(0, 5, 5, at).unwrap(), Some(1));
        assert_eq!(first_at_or_after(0, 5, 41, at).unwrap(), None);
        assert_eq!(first_at_or_after(3, 5, 20, at).unwrap(), Some(4));
        assert_eq!(first_at_or_after(5, 5, 0, at).unwrap(), None);
    }
}
