//! Wall-clock times as the logs write them, in UTC, without a date crate: ISO 8601 for the
//! operational log and the JSON access log, the common log format's own for CLF lines.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `2000-10-10T13:55:36Z`, or with `millis` `2000-10-10T13:55:36.123Z`.
pub fn iso(time: SystemTime, millis: bool, out: &mut Vec<u8>) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(out, "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if millis {
        let _ = write!(out, ".{:03}", since.subsec_millis());
    }
    out.push(b'Z');
}

/// `10/Oct/2000:13:55:36 +0000`.
pub fn clf(time: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's date algorithms.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    #[test]
    fn both_forms_write_the_same_instant() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_487_556_042);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        iso(t, false, &mut a);
        iso(t, true, &mut b);
        clf(t, &mut c);
        assert_eq!(a, b"2026-11-24T02:32:36Z");
        assert_eq!(b, b"2026-11-24T02:32:36.042Z");
        assert_eq!(c, b"24/Nov/2026:02:32:36 +0000");
    }
}
