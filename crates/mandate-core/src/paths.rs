//! Which request paths a path prefix covers (issue 10, item 18).
//!
//! A prefix is matched on path *segments*, never as a string: `/repos/alice`
//! covers `/repos/alice` and `/repos/alice/x`, not `/repos/alice-private`.
//! A prefix ending in `/` covers what is under it (`/repos/alice/` covers
//! `/repos/alice/` and `/repos/alice/x`, not `/repos/alice`). A path with a
//! `.` or `..` segment is covered by nothing: what it names depends on who
//! resolves it.

/// Whether `path` is `prefix` or lies under it, segment by segment.
///
/// Both must start with `/` (anything else is covered by nothing: fail
/// closed). `path` is the path only, without query or fragment.
pub fn path_within(prefix: &str, path: &str) -> bool {
    if !prefix.starts_with('/') || !path.starts_with('/') {
        return false;
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return false;
    }
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_prefix_covers_its_segments_only() {
        let p = "/repos/alice";
        assert!(path_within(p, "/repos/alice"));
        assert!(path_within(p, "/repos/alice/"));
        assert!(path_within(p, "/repos/alice/x"));
        assert!(path_within(p, "/repos/alice/x/y"));
        assert!(!path_within(p, "/repos/alice-private"));
        assert!(!path_within(p, "/repos/alicex/y"));
        assert!(!path_within(p, "/repos/alic"));
        assert!(!path_within(p, "/repos"));
        assert!(!path_within(p, "/repos/bob"));
        assert!(!path_within(p, "/repos/alice/../bob"));
        assert!(!path_within(p, "/repos/alice/./x"));
    }

    #[test]
    fn a_prefix_ending_in_a_slash_covers_what_is_under_it() {
        let p = "/repos/alice/";
        assert!(path_within(p, "/repos/alice/"));
        assert!(path_within(p, "/repos/alice/x"));
        assert!(!path_within(p, "/repos/alice"));
        assert!(!path_within(p, "/repos/alice-private/x"));
        assert!(path_within("/", "/"));
        assert!(path_within("/", "/anything/at/all"));
    }

    #[test]
    fn prefixes_and_paths_not_starting_with_a_slash_cover_nothing() {
        assert!(!path_within("", "/x"));
        assert!(!path_within("repos", "repos/x"));
        assert!(!path_within("/repos", "repos"));
        assert!(!path_within("/repos", ""));
    }

    /// The model: the prefix's segments are the first segments of the path
    /// (a trailing `/` on the prefix adds an empty last segment, so the
    /// path must continue after it).
    fn model(prefix: &[String], trailing: bool, path: &[String]) -> bool {
        if trailing {
            path.len() > prefix.len() && path[..prefix.len()] == *prefix
        } else {
            path.len() >= prefix.len() && path[..prefix.len()] == *prefix
        }
    }

    fn join(segs: &[String]) -> String {
        format!("/{}", segs.join("/"))
    }

    proptest! {
        #[test]
        fn matches_the_segment_model(
            prefix in proptest::collection::vec("[a-c-]{1,3}", 1..4),
            trailing in any::<bool>(),
            path in proptest::collection::vec("[a-c-]{1,3}", 0..6),
        ) {
            let p = if trailing { format!("{}/", join(&prefix)) } else { join(&prefix) };
            // A path ending in `/` has an empty last segment.
            let got = path_within(&p, &join(&path));
            prop_assert_eq!(got, model(&prefix, trailing, &path), "{} {}", p, join(&path));
        }

        #[test]
        fn never_wider_than_a_string_prefix(prefix in "/[a-z/-]{0,8}", path in "/[a-z/.-]{0,12}") {
            if path_within(&prefix, &path) {
                prop_assert!(path.starts_with(&prefix));
            }
        }

        #[test]
        fn a_sibling_sharing_the_prefix_string_is_never_covered(
            prefix in proptest::collection::vec("[a-z]{1,4}", 1..4),
            suffix in "[a-z0-9-]{1,6}",
            rest in "(/[a-z]{1,3}){0,2}",
        ) {
            let p = join(&prefix);
            let path = format!("{p}{suffix}{rest}");
            prop_assert!(!path_within(&p, &path), "{} {}", p, path);
        }
    }
}
