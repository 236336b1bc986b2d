//! Topic names and topic filters (MQTT 3.1.1 section 4.7, MQTT 5.0 section 4.7).
//!
//! - A topic name is what a PUBLISH carries: at least one character, no wildcards.
//! - A topic filter is what a SUBSCRIBE carries: `+` matches exactly one level and must fill
//!   its level; `#` matches any number of levels (including the parent) and must be last.
//! - Filters starting with a wildcard do not match topic names starting with `$`, so `#` does
//!   not see `$SYS/...` or other server topics.

/// Longest topic accepted (the string length limit of the protocol).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty")]
    Empty,
    #[error("longer than 65535 bytes")]
    TooLong,
    #[error("contains U+0000")]
    NullCharacter,
    #[error("wildcard character in a topic name")]
    WildcardInName,
    #[error("'+' must occupy an entire level")]
    PlusNotAlone,
    #[error("'#' must be the last character and occupy an entire level")]
    HashNotLast,
}

impl TopicError {
    /// The reason as a static string (for errors that cannot own a `TopicError`).
    pub fn msg(self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::TooLong => "longer than 65535 bytes",
            TopicError::NullCharacter => "contains U+0000",
            TopicError::WildcardInName => "wildcard character in a topic name",
            TopicError::PlusNotAlone => "'+' must occupy an entire level",
            TopicError::HashNotLast => "'#' must be last and occupy an entire level",
        }
    }
}

/// Checks a topic name (the topic of a PUBLISH).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (of a SUBSCRIBE or UNSUBSCRIBE).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::HashNotLast);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::PlusNotAlone);
        }
    }
    Ok(())
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// True if `filter` has a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// True if the (valid) `filter` matches the (valid) topic name `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic matched by `inner` is also matched by `outer`.
///
/// Used by authorization: a subscription to `inner` is allowed if a permitted filter covers it.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il && ol != "+" && ol != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("devices/a/telemetry").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name(&"x".repeat(65_536)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/+",
            "/#",
            "a//b",
            "sport/tennis/+",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate_topic_filter("a#"), Err(TopicError::HashNotLast));
        assert_eq!(validate_topic_filter("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(validate_topic_filter("a/b#"), Err(TopicError::HashNotLast));
        assert_eq!(validate_topic_filter("a+"), Err(TopicError::PlusNotAlone));
        assert_eq!(
            validate_topic_filter("a/+b/c"),
            Err(TopicError::PlusNotAlone)
        );
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn matching_follows_the_specification_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("#", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn covering() {
        assert!(filter_covers("devices/a/#", "devices/a/#"));
        assert!(filter_covers("devices/a/#", "devices/a"));
        assert!(filter_covers("devices/a/#", "devices/a/+/x"));
        assert!(!filter_covers("devices/a/#", "devices/+/x"));
        assert!(!filter_covers("devices/a/#", "devices/#"));
        assert!(!filter_covers("devices/a/#", "#"));
        assert!(filter_covers("devices/+/t", "devices/a/t"));
        assert!(filter_covers("devices/+/t", "devices/+/t"));
        assert!(!filter_covers("devices/+/t", "devices/#"));
        assert!(!filter_covers("devices/a/t", "devices/+/t"));
    }
}
