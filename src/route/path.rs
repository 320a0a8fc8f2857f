//! Request-target path normalisation: this module owns the one canonical form
//! of a request path that lbd both routes on and forwards, so a request can
//! never be routed by one spelling of its path and served by the backend under
//! another (the classic proxy/backend "interpretation conflict", CWE-436).
//! [`normalize`] runs on the origin-form request target (`/path?query`) before
//! route matching, and its output replaces the request target sent upstream.
//!
//! # Policy
//!
//! References: nginx normalises `$uri` (dot segments, `merge_slashes on` by
//! default) and rejects invalid `%` escapes with 400; Envoy has `normalize_path`
//! (RFC 3986 dot-segment removal), `merge_slashes`, and
//! `path_with_escaped_slashes_action`, of which we take `REJECT_REQUEST`.
//! Unlike both, we never decode anything: the only rewrites are the two below,
//! so apart from them the backend sees exactly the bytes the client sent.
//!
//! Rewritten (the result is the normal form):
//! - runs of `/` are merged into one (`//a///b` → `/a/b`), like nginx
//!   `merge_slashes on`; merging happens before dot segments are resolved, so
//!   `/a//../b` → `/b`;
//! - `.` segments are removed and `..` segments remove the preceding segment,
//!   per RFC 3986 §5.2.4 (`/a/./b/../c` → `/a/c`; `/a/.` → `/a/`, `/a/..` → `/`).
//!   A trailing slash is kept when present.
//!
//! Rejected (lbd answers 400), see [`PathError`]:
//! - a `..` that would climb above the root (`/..`, `/a/../..`) — RFC 3986
//!   silently drops it, we refuse it since no honest client sends it;
//! - a percent-encoded slash or backslash (`%2F`, `%2f`, `%5C`, `%5c`) anywhere
//!   in the path: whether the backend decodes it before splitting segments is
//!   unknowable (Envoy `REJECT_REQUEST`);
//! - a raw backslash (some backends treat it as a separator);
//! - a segment that is a dot segment only once `%2E`/`%2e` is decoded
//!   (`/%2e%2e/`, `/.%2E/`, `/%2e/`): we chose reject over decode-then-normalise
//!   because it keeps "never decode" true and no legitimate client sends it.
//!   `%2e` inside an ordinary segment (`/file%2etxt`, `/...%2e`) is kept as is;
//! - a malformed escape (`%` not followed by two hex digits), as nginx does;
//! - a space, control byte or DEL in the path, and a `#` anywhere in the
//!   target (fragments are never sent in a request target, RFC 9112 §3.2);
//! - a target that does not start with `/` (`*`, absolute-form): the caller
//!   handles `OPTIONS *` and converts absolute-form before calling us.
//!
//! Left alone: every other percent-encoding (not decoded, hex case not
//! changed), bytes >= 0x80, and the whole query string (after the first `?`),
//! which is only scanned for `#`. Consequence: route prefixes match the raw
//! form, so `/%61dmin` does not match a `/admin` prefix; prefix routing is not
//! an access-control mechanism.
//!
//! The normal form is a fixed point: `normalize(normalize(x)) == normalize(x)`,
//! and an already-normal target is returned as is, without copying — the
//! common case costs one scan and no allocation.

use std::fmt;

/// Why a request target was refused; lbd answers 400 Bad Request to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The target does not start with `/` (e.g. `*` or absolute-form).
    NotOriginForm,
    /// The target contains `#`; fragments are not part of a request target.
    Fragment,
    /// The path contains a space, a control byte or DEL.
    InvalidByte,
    /// The path contains a `%` not followed by two hex digits.
    BadPercentEncoding,
    /// The path contains `%2F` or `%5C` (an encoded `/` or `\`), in any case.
    EncodedSlash,
    /// The path contains a raw `\`.
    Backslash,
    /// A segment is `.` or `..` once `%2E` is decoded (e.g. `%2e%2e`).
    EncodedDotSegment,
    /// A `..` segment would climb above the root.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

impl PathError {
    /// The reason, for the 400 the client gets.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "request target does not start with \"/\"",
            PathError::Fragment => "request target contains a fragment (\"#\")",
            PathError::InvalidByte => "path contains a space or control character",
            PathError::BadPercentEncoding => "path contains a malformed percent-encoding",
            PathError::EncodedSlash => "path contains a percent-encoded slash or backslash",
            PathError::Backslash => "path contains a backslash",
            PathError::EncodedDotSegment => "path contains a percent-encoded dot segment",
            PathError::AboveRoot => "path climbs above the root with \"..\"",
        }
    }
}

/// Splits a request target into its path and its query, the query keeping its
/// leading `?` (empty when there is none). Never fails.
pub fn split_path_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => target.split_at(q),
        None => (target, &[]),
    }
}

/// Normalises an origin-form request target (`/path?query`) as described in
/// the module documentation, returning the normalised path and query.
///
/// When the target is already normal it is returned itself (no copy, `scratch`
/// untouched); otherwise the result is written into `scratch` (cleared first)
/// and borrowed from it.
pub fn normalize<'a>(target: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<&'a [u8], PathError> {
    let (path, query) = split_path_query(target);
    if query.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    if path.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Validate every segment first, so byte-level errors are reported the same
    // way whether or not a rewrite is needed.
    let mut rewrite = false;
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        match classify(seg)? {
            Segment::Normal => {}
            // A final empty segment is a trailing slash (or the root itself).
            Segment::Empty => rewrite |= segments.peek().is_some(),
            Segment::Dot | Segment::DotDot => rewrite = true,
        }
    }
    if !rewrite {
        return Ok(target);
    }
    scratch.clear();
    rewrite_path(path, scratch)?;
    scratch.extend_from_slice(query);
    Ok(&scratch[..])
}

/// Writes the normal form of `path` (validated, starting with `/`) into `out`.
fn rewrite_path(path: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    out.push(b'/');
    // Invariant: before each segment, `out` ends with `/`; only a final
    // ordinary segment is appended without one.
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        match classify(seg)? {
            Segment::Empty | Segment::Dot => {}
            Segment::DotDot => {
                if out.len() == 1 {
                    return Err(PathError::AboveRoot);
                }
                let keep = out[..out.len() - 1]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map_or(1, |p| p + 1);
                out.truncate(keep);
            }
            Segment::Normal => {
                out.extend_from_slice(seg);
                if segments.peek().is_some() {
                    out.push(b'/');
                }
            }
        }
    }
    Ok(())
}

/// What one path segment (between slashes) is.
enum Segment {
    /// Nothing between two slashes, or after the final one.
    Empty,
    /// `.`
    Dot,
    /// `..`
    DotDot,
    /// Anything else.
    Normal,
}

/// Validates one segment and says what it is.
fn classify(seg: &[u8]) -> Result<Segment, PathError> {
    if seg.is_empty() {
        return Ok(Segment::Empty);
    }
    let (mut dots, mut encoded_dot, mut other) = (0usize, false, false);
    let mut i = 0;
    while i < seg.len() {
        match seg[i] {
            b'.' => dots += 1,
            b'%' => {
                let hi = seg.get(i + 1).copied().and_then(hex);
                let lo = seg.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercentEncoding);
                };
                match hi << 4 | lo {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b'.' => {
                        dots += 1;
                        encoded_dot = true;
                    }
                    _ => other = true,
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            0..=0x20 | 0x7f => return Err(PathError::InvalidByte),
            _ => other = true,
        }
        i += 1;
    }
    Ok(match (other, dots) {
        (false, 1 | 2) if encoded_dot => return Err(PathError::EncodedDotSegment),
        (false, 1) => Segment::Dot,
        (false, 2) => Segment::DotDot,
        _ => Segment::Normal,
    })
}

/// The value of one ASCII hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Removes a route's `prefix` from a (normalised) path and query, keeping a
/// leading `/`: with prefix `/v1`, `/v1/users?x` → `/users?x`, `/v1` → `/`,
/// `/v1?x` → `/?x`; with prefix `/v1/`, `/v1/users` → `/users`.
///
/// The prefix is only removed at a segment boundary — where the prefix ends
/// with `/`, or the rest is empty or starts with `/` or `?`. A cut inside a
/// segment (`/v10` with prefix `/v1`) returns the input unchanged: cutting
/// there would invent a new segment (nginx's "off-by-slash" problem, where
/// `/v1..` becomes `/..`). Input not starting with `prefix` is also returned
/// unchanged. Only the `/?query` case writes into `scratch`; every other
/// result borrows the input (or is the static `/`).
pub fn strip_prefix<'a>(
    path_and_query: &'a [u8],
    prefix: &[u8],
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    let Some(rest) = path_and_query.strip_prefix(prefix) else {
        return path_and_query;
    };
    match rest.first() {
        Some(b'/') => rest,
        // `prefix` is non-empty here, and its final `/` starts the rest.
        _ if prefix.last() == Some(&b'/') => &path_and_query[prefix.len() - 1..],
        None => b"/",
        Some(b'?') => {
            scratch.clear();
            scratch.push(b'/');
            scratch.extend_from_slice(rest);
            &scratch[..]
        }
        Some(_) => path_and_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normalises `s`, as a string, and says whether the input was borrowed.
    fn norm(s: &str) -> Result<(String, bool), PathError> {
        let mut scratch = Vec::new();
        let out = normalize(s.as_bytes(), &mut scratch)?;
        let borrowed = std::ptr::eq(out, s.as_bytes());
        Ok((String::from_utf8_lossy(out).into_owned(), borrowed))
    }

    fn ok(s: &str) -> String {
        match norm(s) {
            Ok((out, _)) => out,
            Err(e) => panic!("{s:?} rejected: {e}"),
        }
    }

    #[test]
    fn normal_targets_are_borrowed_and_scratch_untouched() {
        for s in [
            "/",
            "/a",
            "/a/",
            "/a/b/c.txt",
            "/.well-known/x",
            "/a..b/...",
            "/file%2etxt",
            "/%41?x",
            "/a?b//../%2f",
            "/%C3%A9t%C3%A9",
        ] {
            let mut scratch = Vec::new();
            let out = normalize(s.as_bytes(), &mut scratch);
            assert!(
                matches!(out, Ok(o) if std::ptr::eq(o, s.as_bytes())),
                "{s:?}"
            );
            assert_eq!(scratch.capacity(), 0, "{s:?} allocated");
        }
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("/a///b//"), "/a/b/");
        assert_eq!(ok("///a"), "/a");
    }

    #[test]
    fn resolves_dot_segments() {
        assert_eq!(ok("/./admin"), "/admin");
        assert_eq!(ok("/x/../admin"), "/admin");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/../"), "/a/");
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/a/b/c/./../../g"), "/a/g"); // RFC 3986 §5.2.4 example
        assert_eq!(ok("/a//../b"), "/b"); // slashes merged first
        assert_eq!(ok("/a/..b/.c/"), "/a/..b/.c/");
    }

    #[test]
    fn query_is_passed_through_untouched() {
        assert_eq!(ok("/a/../b?x=/../%2f//"), "/b?x=/../%2f//");
        assert_eq!(ok("//?"), "/?");
        assert_eq!(ok("/a?"), "/a?");
        assert_eq!(norm("/?../"), Ok(("/?../".into(), true)));
    }

    #[test]
    fn rejects_climbing_above_root() {
        for s in [
            "/..",
            "/../",
            "/../a",
            "/a/../..",
            "/a/b/../../..",
            "//..",
            "/./..",
        ] {
            assert_eq!(norm(s), Err(PathError::AboveRoot), "{s:?}");
        }
    }

    #[test]
    fn rejects_encoded_separators() {
        for s in [
            "/%2Fadmin",
            "/%2fadmin",
            "/assets/..%2fadmin",
            "/a%5Cb",
            "/a%5c",
            "/%2F?x",
        ] {
            assert_eq!(norm(s), Err(PathError::EncodedSlash), "{s:?}");
        }
    }

    #[test]
    fn rejects_encoded_dot_segments_but_keeps_other_encodings() {
        for s in [
            "/%2e%2e/admin",
            "/assets/%2e%2e/admin",
            "/%2E",
            "/.%2e/",
            "/a/%2e/b",
            "/%2E.",
        ] {
            assert_eq!(norm(s), Err(PathError::EncodedDotSegment), "{s:?}");
        }
        assert_eq!(norm("/%2e%2e%2e"), Ok(("/%2e%2e%2e".into(), true)));
        assert_eq!(norm("/%2ex"), Ok(("/%2ex".into(), true)));
        assert_eq!(ok("/%41/./%7e"), "/%41/%7e"); // not decoded, hex case kept
    }

    #[test]
    fn rejects_backslashes_and_bad_bytes() {
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/..\\admin"), Err(PathError::Backslash));
        assert_eq!(norm("\\admin"), Err(PathError::NotOriginForm));
        assert_eq!(norm("/a b"), Err(PathError::InvalidByte));
        assert_eq!(norm("/a\0"), Err(PathError::InvalidByte));
        assert_eq!(norm("/a\x7f"), Err(PathError::InvalidByte));
        assert_eq!(norm("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%2?f"), Err(PathError::BadPercentEncoding));
    }

    #[test]
    fn rejects_fragments_and_non_origin_form() {
        assert_eq!(norm("/a#b"), Err(PathError::Fragment));
        assert_eq!(norm("/a?x#b"), Err(PathError::Fragment));
        assert_eq!(norm(""), Err(PathError::NotOriginForm));
        assert_eq!(norm("*"), Err(PathError::NotOriginForm));
        assert_eq!(norm("?x"), Err(PathError::NotOriginForm));
        assert_eq!(norm("http://h/a"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn validation_errors_win_over_rewrites() {
        // The whole path is validated before `..` is resolved.
        assert_eq!(norm("/../%2f"), Err(PathError::EncodedSlash));
        assert_eq!(norm("//a b"), Err(PathError::InvalidByte));
    }

    #[test]
    fn rewritten_output_reuses_scratch() {
        let mut scratch = b"garbage".to_vec();
        let out = normalize(b"/a//b?q", &mut scratch);
        assert_eq!(out, Ok(&b"/a/b?q"[..]));
        assert_eq!(scratch, b"/a/b?q");
    }

    /// Reference model: merge slashes, then RFC 3986 §5.2.4 literally, with
    /// climbing above the root reported as `None`.
    fn model(path: &str) -> Option<String> {
        let mut input = String::new();
        for c in path.chars() {
            if !(c == '/' && input.ends_with('/')) {
                input.push(c);
            }
        }
        let mut out = String::new();
        let pop = |out: &mut String| -> Option<()> {
            let cut = out.rfind('/')?;
            out.truncate(cut);
            Some(())
        };
        while !input.is_empty() {
            if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") {
                input.replace_range(..4, "/");
                pop(&mut out)?;
            } else if input == "/.." {
                input = "/".into();
                pop(&mut out)?;
            } else {
                let end = input[1..].find('/').map_or(input.len(), |p| p + 1);
                out.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        Some(out)
    }

    #[test]
    fn exhaustive_short_strings_match_model_and_are_idempotent() {
        const ALPHABET: [&str; 5] = ["/", ".", "a", "%2e", "%2f"];
        let mut strings = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..7 {
            let mut next = Vec::new();
            for s in &frontier {
                for t in ALPHABET {
                    next.push(format!("{s}{t}"));
                }
            }
            strings.extend(next.iter().cloned());
            frontier = next;
        }
        let mut accepted = 0;
        for s in &strings {
            let got = norm(s);
            let expected = if !s.starts_with('/') {
                Err(PathError::NotOriginForm)
            } else if let Some(e) = s.split('/').find_map(|seg| {
                let decoded = seg.replace("%2e", ".");
                if seg.contains("%2f") {
                    Some(PathError::EncodedSlash)
                } else if seg.contains('%') && (decoded == "." || decoded == "..") {
                    Some(PathError::EncodedDotSegment)
                } else {
                    None
                }
            }) {
                Err(e)
            } else {
                model(s).ok_or(PathError::AboveRoot)
            };
            match (&got, &expected) {
                (Ok((out, borrowed)), Ok(want)) => {
                    assert_eq!(out, want, "{s:?}");
                    assert_eq!(*borrowed, out == s, "{s:?}: copied needlessly");
                    // Idempotent: the output is normal, hence borrowed as is.
                    assert_eq!(norm(out), Ok((out.clone(), true)), "{s:?}");
                    let with_query = format!("{s}?/../%2f");
                    assert_eq!(ok(&with_query), format!("{out}?/../%2f"));
                    accepted += 1;
                }
                (Err(g), Err(w)) => assert_eq!(g, w, "{s:?}"),
                _ => panic!("{s:?}: got {got:?}, expected {expected:?}"),
            }
        }
        assert!(strings.len() > 90_000 && accepted > 1_000, "{accepted}");
    }

    fn strip(p: &str, prefix: &str) -> String {
        let mut scratch = Vec::new();
        String::from_utf8_lossy(strip_prefix(p.as_bytes(), prefix.as_bytes(), &mut scratch))
            .into_owned()
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(strip("/v1/users?x", "/v1"), "/users?x");
        assert_eq!(strip("/v1", "/v1"), "/");
        assert_eq!(strip("/v1?x", "/v1"), "/?x");
        assert_eq!(strip("/v1/users", "/v1/"), "/users");
        assert_eq!(strip("/v1/", "/v1/"), "/");
        assert_eq!(strip("/v1/?x", "/v1/"), "/?x");
        assert_eq!(strip("/users", "/"), "/users");
        assert_eq!(strip("/users", ""), "/users");
    }

    #[test]
    fn strip_prefix_leaves_mid_segment_and_non_matching_paths() {
        assert_eq!(strip("/v10", "/v1"), "/v10");
        assert_eq!(strip("/v1..", "/v1"), "/v1..");
        assert_eq!(strip("/v1../admin", "/v1"), "/v1../admin");
        assert_eq!(strip("/v2/users", "/v1"), "/v2/users");
        assert_eq!(strip("/v", "/v1"), "/v");
    }

    #[test]
    fn strip_prefix_copies_only_for_a_bare_query() {
        let mut scratch = Vec::new();
        let p = b"/v1/users?x";
        assert!(std::ptr::eq(strip_prefix(p, b"/v1", &mut scratch), &p[3..]));
        assert!(std::ptr::eq(
            strip_prefix(p, b"/v1/", &mut scratch),
            &p[3..]
        ));
        assert_eq!(strip_prefix(b"/v1", b"/v1", &mut scratch), b"/");
        assert_eq!(scratch.capacity(), 0);
        assert_eq!(strip_prefix(b"/v1?x", b"/v1", &mut scratch), b"/?x");
    }

    #[test]
    fn split_path_query_splits_at_first_question_mark() {
        assert_eq!(split_path_query(b"/a?b?c"), (&b"/a"[..], &b"?b?c"[..]));
        assert_eq!(split_path_query(b"/a"), (&b"/a"[..], &b""[..]));
    }
}
