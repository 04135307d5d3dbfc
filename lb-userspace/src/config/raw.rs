//! The file as written: private structs that keep every value with its
//! position, and the parse step that turns serde-saphyr's errors into an
//! [`Issue`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_saphyr::{
    Localizer, Location, MessageFormatter, SnippetMode, Spanned, UserMessageFormatter,
};

use super::{Issue, field_path::field_path_at};

/// Top level of the file. Scalars are read as strings and converted by
/// [`Checker`](super::validate::Checker), so that bad values are reported
/// with their path and all together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) bpffs_dir: Option<Spanned<String>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) metrics_addr: Option<Spanned<String>>,
    pub(super) api_addr: Option<Spanned<String>>,
    pub(super) services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

/// One entry of `services`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<Spanned<String>>,
    pub(super) vip: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) default_server: Option<Spanned<String>>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
}

/// A service's `health_check` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

/// Turns a parser error into an [`Issue`] with the path of the node it
/// points at.
pub(super) fn parse_raw(text: &str) -> Result<Spanned<RawConfig>, Issue> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let location = error.location().unwrap_or(Location::UNKNOWN);
        let path = field_path_at(text, location).or_else(|| {
            // A value of the wrong shape followed by a syntax error
            // (`vip: [::1]:6444`): the text before the value is still valid
            // YAML and ends with the value's key.
            let wrong_shape = matches!(error, serde_saphyr::Error::Unexpected { .. });
            let offset = usize::try_from(location.span().byte_offset()?).ok()?;
            field_path_at(text.get(..offset).filter(|_| wrong_shape)?, location)
        });
        Issue {
            location,
            path: path.unwrap_or_default(),
            message: error.render_with_options(serde_saphyr::render_options! {
                formatter: &ParseErrorFormatter,
                snippets: SnippetMode::Off,
            }),
        }
    })
}

/// serde-saphyr's user-facing messages, without its "at line X, column Y"
/// suffix (the position is printed in front instead) and with friendlier
/// words for the structural errors.
struct ParseErrorFormatter;

impl MessageFormatter for ParseErrorFormatter {
    fn localizer(&self) -> &dyn Localizer {
        &NoLocationSuffix
    }

    fn format_message<'a>(&self, error: &'a serde_saphyr::Error) -> Cow<'a, str> {
        match error {
            serde_saphyr::Error::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list"),
            serde_saphyr::Error::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping (`key: value` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "string scalar",
                ..
            } => Cow::Borrowed(
                "expected a single value, not a list or mapping (quote values that start with [ or {, e.g. \"[::1]:6444\")",
            ),
            _ => UserMessageFormatter.format_message(error),
        }
    }
}

/// A [`Localizer`] that leaves positions out of messages.
struct NoLocationSuffix;

impl Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _location: Location) -> Cow<'a, str> {
        base
    }
}
