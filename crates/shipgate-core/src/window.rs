//! Deploy windows (`require.window = "Mon-Fri 09:00-17:00 Europe/Paris"`): when a promotion may
//! enter an environment. Windows are civil times in a time zone, so 09:00 stays 09:00 on both
//! sides of a daylight-saving change.

use std::fmt;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// One recurring window: on some weekdays, from one time of day to another, in one time zone.
#[derive(Clone)]
pub struct DeployWindow {
    text: String,
    /// Monday first.
    days: [bool; 7],
    start: Time,
    /// Minutes after midnight; 1440 for `24:00`.
    end_minutes: u32,
    tz: TimeZone,
}

/// Whether a window is open at a moment, and when that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open now; closes at this moment.
    Open {
        /// When it closes.
        closes: Timestamp,
    },
    /// Closed now; opens at this moment.
    Closed {
        /// When it next opens.
        opens: Timestamp,
    },
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day_index(word: &str) -> Option<usize> {
    let word = word.to_ascii_lowercase();
    DAYS.iter()
        .position(|(d, _)| word == *d || (word.len() > 3 && full_name(d).starts_with(&word)))
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    if matches!(s.to_ascii_lowercase().as_str(), "daily" | "every-day" | "*") {
        return Ok([true; 7]);
    }
    for part in s.split(',') {
        let unknown =
            |d: &str| format!("`{d}` is not a weekday: write Mon, Tue, Wed, Thu, Fri, Sat or Sun");
        match part.split_once('-') {
            Some((a, b)) => {
                let a = day_index(a).ok_or_else(|| unknown(a))?;
                let b = day_index(b).ok_or_else(|| unknown(b))?;
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day_index(part).ok_or_else(|| unknown(part))?] = true,
        }
    }
    Ok(days)
}

fn parse_time(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= 24 * 60).then_some(minutes)
}

impl DeployWindow {
    /// Parses `DAYS HH:MM-HH:MM [TIME_ZONE]`: days as `Mon-Fri`, `Mon,Wed,Fri`, `Sat-Sun` or
    /// `daily`; the time zone an IANA name (default UTC). An end before the start runs past
    /// midnight into the next day.
    pub fn parse(s: &str) -> Result<Self, String> {
        let example =
            "write DAYS HH:MM-HH:MM TIME_ZONE, for example \"Mon-Fri 09:00-17:00 Europe/Paris\"";
        let parts: Vec<&str> = s.split_whitespace().collect();
        let (days, times, zone) = match parts.as_slice() {
            [d, t] => (*d, *t, "UTC"),
            [d, t, z] => (*d, *t, *z),
            _ => return Err(format!("`{s}` is not a deploy window: {example}")),
        };
        let days = parse_days(days).map_err(|e| format!("{e} (in `{s}`)"))?;
        let (start, end) = times
            .split_once('-')
            .and_then(|(a, b)| Some((parse_time(a)?, parse_time(b)?)))
            .ok_or_else(|| format!("`{times}` is not a time range: {example}"))?;
        if start == end || start == 24 * 60 {
            return Err(format!(
                "the window `{s}` never opens: give a start before the end"
            ));
        }
        let tz = TimeZone::get(zone).map_err(|_| {
            format!("`{zone}` is not a time zone: use an IANA name such as Europe/Paris, America/New_York or UTC")
        })?;
        let start = Time::new((start / 60) as i8, (start % 60) as i8, 0, 0)
            .map_err(|e| format!("`{times}`: {e}"))?;
        Ok(Self {
            text: s.to_owned(),
            days,
            start,
            end_minutes: end,
            tz,
        })
    }

    /// The window as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The time zone's name.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The opening and closing moments of the window that opens on `date` (if it opens then).
    fn interval_on(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        let weekday = date.weekday().to_monday_zero_offset() as usize;
        if !self.days[weekday] {
            return None;
        }
        let start_minutes = self.start.hour() as u32 * 60 + self.start.minute() as u32;
        let (end_date, end_minutes) = if self.end_minutes <= start_minutes {
            (date.tomorrow().ok()?, self.end_minutes)
        } else if self.end_minutes == 24 * 60 {
            (date.tomorrow().ok()?, 0)
        } else {
            (date, self.end_minutes)
        };
        let end = Time::new((end_minutes / 60) as i8, (end_minutes % 60) as i8, 0, 0).ok()?;
        // Civil times that fall in a gap or a fold resolve the "compatible" way (as RFC 5545).
        let opens = date
            .to_datetime(self.start)
            .to_zoned(self.tz.clone())
            .ok()?;
        let closes = end_date.to_datetime(end).to_zoned(self.tz.clone()).ok()?;
        Some((opens.timestamp(), closes.timestamp()))
    }

    /// Whether the window is open at `now`, and when that changes.
    pub fn state(&self, now: Timestamp) -> WindowState {
        let today = now.to_zoned(self.tz.clone()).date();
        let mut next_open: Option<Timestamp> = None;
        // A window that opened yesterday may still be open; any window opens within 8 days.
        for offset in -1..=8i64 {
            let Ok(date) = today.checked_add(offset.days()) else {
                continue;
            };
            let Some((opens, closes)) = self.interval_on(date) else {
                continue;
            };
            if opens <= now && now < closes {
                return WindowState::Open { closes };
            }
            if opens > now && next_open.is_none_or(|n| opens < n) {
                next_open = Some(opens);
            }
        }
        // `parse` refuses windows without a day or of zero length, so one opens within 8 days.
        WindowState::Closed {
            opens: next_open.unwrap_or(now),
        }
    }

    /// A moment written as the window's local time, such as `Mon 2026-03-30 09:00 Europe/Paris`.
    pub fn local(&self, at: Timestamp) -> String {
        let z = at.to_zoned(self.tz.clone());
        let name = self.tz.iana_name().unwrap_or("UTC");
        format!("{} {name}", z.strftime("%a %Y-%m-%d %H:%M"))
    }
}

impl fmt::Debug for DeployWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployWindow({:?})", self.text)
    }
}

impl PartialEq for DeployWindow {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The state of several windows together: open while any one is.
pub fn state_of(windows: &[DeployWindow], now: Timestamp) -> Option<WindowState> {
    let states: Vec<WindowState> = windows.iter().map(|w| w.state(now)).collect();
    let closes = states.iter().filter_map(|s| match s {
        WindowState::Open { closes } => Some(*closes),
        WindowState::Closed { .. } => None,
    });
    if let Some(closes) = closes.max() {
        return Some(WindowState::Open { closes });
    }
    let opens = states.iter().filter_map(|s| match s {
        WindowState::Closed { opens } => Some(*opens),
        WindowState::Open { .. } => None,
    });
    opens.min().map(|opens| WindowState::Closed { opens })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn office_hours_follow_daylight_saving() {
        let w = DeployWindow::parse("Mon-Fri 09:00-17:00 Europe/Paris").unwrap();
        // Friday 2026-03-27 is still winter time (UTC+1): 09:00 Paris is 08:00 UTC.
        assert!(matches!(
            w.state(at("2026-03-27T07:30:00Z")),
            WindowState::Closed { .. }
        ));
        assert_eq!(
            w.state(at("2026-03-27T08:00:00Z")),
            WindowState::Open {
                closes: at("2026-03-27T16:00:00Z")
            }
        );
        // Clocks went forward on Sunday 2026-03-29: on Monday 09:00 Paris is 07:00 UTC.
        assert_eq!(
            w.state(at("2026-03-28T12:00:00Z")),
            WindowState::Closed {
                opens: at("2026-03-30T07:00:00Z")
            }
        );
        assert_eq!(
            w.state(at("2026-03-30T07:30:00Z")),
            WindowState::Open {
                closes: at("2026-03-30T15:00:00Z")
            }
        );
        assert_eq!(
            w.local(at("2026-03-30T07:00:00Z")),
            "Mon 2026-03-30 09:00 Europe/Paris"
        );
        // And back in October: 2026-10-26 is winter time again.
        assert_eq!(
            w.state(at("2026-10-24T12:00:00Z")),
            WindowState::Closed {
                opens: at("2026-10-26T08:00:00Z")
            }
        );
    }

    #[test]
    fn overnight_windows_and_day_lists() {
        let w = DeployWindow::parse("Sat,Sun 22:00-02:00").unwrap();
        // Saturday 23:00 UTC is open until Sunday 02:00; Sunday 01:00 too (the Saturday window).
        assert_eq!(
            w.state(at("2026-12-05T23:00:00Z")),
            WindowState::Open {
                closes: at("2026-12-06T02:00:00Z")
            }
        );
        assert!(matches!(
            w.state(at("2026-12-07T01:00:00Z")),
            WindowState::Open { .. }
        ));
        assert_eq!(
            w.state(at("2026-12-07T03:00:00Z")),
            WindowState::Closed {
                opens: at("2026-12-12T22:00:00Z")
            }
        );
        let all_day = DeployWindow::parse("daily 00:00-24:00 UTC").unwrap();
        assert!(matches!(
            all_day.state(at("2026-12-01T12:00:00Z")),
            WindowState::Open { .. }
        ));
    }

    #[test]
    fn several_windows_open_when_any_is() {
        let ws = [
            DeployWindow::parse("Mon 09:00-10:00").unwrap(),
            DeployWindow::parse("Wed 09:00-10:00").unwrap(),
        ];
        // Tuesday 2026-12-01: the next opening is Wednesday's.
        assert_eq!(
            state_of(&ws, at("2026-12-01T12:00:00Z")),
            Some(WindowState::Closed {
                opens: at("2026-12-02T09:00:00Z")
            })
        );
        assert_eq!(state_of(&[], at("2026-12-01T12:00:00Z")), None);
    }

    #[test]
    fn malformed_windows_say_what_to_write() {
        for (bad, says) in [
            ("Mon-Fri", "is not a deploy window"),
            ("Mon-Fry 09:00-17:00", "`Fry` is not a weekday"),
            ("Mon 9-17", "is not a time range"),
            ("Mon 09:00-09:00", "never opens"),
            ("Mon 09:00-17:00 Mars/Olympus", "is not a time zone"),
            ("Mon 25:00-26:00", "is not a time range"),
        ] {
            let err = DeployWindow::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
