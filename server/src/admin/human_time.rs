//! Times as the admin reads them, for the CLI and the console alike: Unix
//! seconds in the relay's time zone, and the Unix times that older audit
//! details carry as text.

/// Unix seconds as ISO 8601 in `zone` (`2026-11-29T03:04:05+01:00`).
pub fn iso_time(at: i64, zone: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_second(at) {
        Ok(t) => t
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

/// Unix seconds as local time for people (`2026-11-29 03:04:05 CET`).
pub fn local_time(at: i64, zone: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_second(at) {
        Ok(t) => t
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

/// Rewrites the Unix times that older audit details carry as text
/// (`expires at 1796000587`) in local time.
pub fn times_in_text(detail: &str, zone: &jiff::tz::TimeZone) -> String {
    const MARK: &str = "expires at ";
    let Some(start) = detail.find(MARK).map(|i| i + MARK.len()) else {
        return detail.to_string();
    };
    let digits = detail[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(detail.len(), |n| start + n);
    match detail[start..digits].parse::<i64>() {
        Ok(at) if digits > start => format!(
            "{}{}{}",
            &detail[..start],
            iso_time(at, zone),
            &detail[digits..]
        ),
        _ => detail.to_string(),
    }
}
