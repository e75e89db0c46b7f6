//! How durations are written in the settings: `"30s"`, `"250ms"`, `"4d"`, with a unit.
//!
//! In: a TOML value. Out: a [`std::time::Duration`], or an error that says what to write. A
//! leaf, like [`crate::redact`]: used by every module that owns a settings type (`config`,
//! `routing`, `sinks`), and using none of them.

/// Durations written as in `config/default.toml` (`"30s"`, `"5m"`, `"4d"`). A bare number is
/// refused with an example of what to write: it has no unit, and guessing one would be wrong
/// for half the keys.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(value, serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    /// For keys that may be left out (a sink's own `retry_initial`).
    pub(crate) mod optional {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            humantime_serde::option::serialize(value, serializer)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] Duration);
            Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(value)| value))
        }
    }

    struct DurationVisitor;

    fn a_number<E: Error>(number: impl std::fmt::Display) -> E {
        E::custom(format!(
            "is the number {number}, but a duration needs a unit: write it as a string such as \
             \"{number}s\" (seconds) or \"{number}ms\" (milliseconds)"
        ))
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a duration with a unit, such as \"30s\", \"5m\" or \"4d\"")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
            let trimmed = text.trim();
            if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
                return Err(a_number(trimmed));
            }
            humantime::parse_duration(trimmed).map_err(|problem| {
                E::custom(format!(
                    "is not a duration ({problem}): write a number and a unit, such as \"30s\", \
                     \"250ms\", \"5m\" or \"4d\""
                ))
            })
        }

        fn visit_u64<E: Error>(self, number: u64) -> Result<Duration, E> {
            Err(a_number(number))
        }

        fn visit_i64<E: Error>(self, number: i64) -> Result<Duration, E> {
            Err(a_number(number))
        }

        fn visit_f64<E: Error>(self, number: f64) -> Result<Duration, E> {
            Err(a_number(number))
        }
    }
}
