//! Property-based tests (proptest) for the pure parsers every request goes through: the query
//! and parameter parser, the geometry check, the `Range` parser and `Content-Disposition`.
//!
//! Case counts are kept modest so that the whole file runs in a few seconds in debug.

use chunkd::download::{RangeSpec, content_disposition, parse_range, safe_content_type};
use chunkd::geometry::{Declared, Expect, Shape};
use chunkd::protocol::{
    MAX_FILENAME, MAX_IDENTIFIER, MAX_RELATIVE_PATH, MAX_TYPE, Params, clean_text, names,
    parse_number, parse_query,
};
use proptest::prelude::*;
use std::borrow::Cow;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported in the test output; no regression files in the repository.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings made mostly of the characters that matter to a query parser.
fn query_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![
                "&", "=", "%", "+", "%2", "%zz", "%ff", "%00", "%0A", "%C3%A9", "%e2%82", "a",
                "resumableChunkNumber", "flowIdentifier", "chunk_number", "resumableTotalSize",
                "resumableFilename", "filename", "type", "1", "0", "-1", "18446744073709551616",
            ])
            .prop_map(str::to_string),
            1 => any::<String>(),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// Every name a parameter goes by, with its group.
fn all_groups() -> Vec<&'static [&'static str]> {
    vec![
        names::NUMBER,
        names::CHUNK_SIZE,
        names::CURRENT_SIZE,
        names::TOTAL_SIZE,
        names::TOTAL_CHUNKS,
        names::IDENTIFIER,
        names::FILENAME,
        names::RELATIVE_PATH,
        names::TYPE,
    ]
}

/// Parsed pairs as owned strings, to compare with what was encoded.
fn owned(pairs: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

proptest! {
    #![proptest_config(config(512))]

    /// No input makes the parser panic, and whatever it accepts is bounded and clean.
    #[test]
    fn the_query_parser_never_panics(raw in prop_oneof![query_like(), any::<String>()]) {
        match parse_query(&raw) {
            Ok(pairs) => {
                prop_assert!(pairs.len() <= 256);
                // Decoding never makes a pair longer than it was sent.
                let decoded: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(decoded <= raw.len());
            }
            Err(e) => {
                prop_assert_eq!(e.status().as_u16(), 400);
            }
        }
        if let Ok(params) = Params::from_query(Some(&raw)) {
            for id in [None, Some("twake-file".to_string())] {
                if let Ok(c) = params.chunk(id) {
                    prop_assert!(!c.identifier.is_empty() && c.identifier.len() <= MAX_IDENTIFIER);
                    prop_assert!(!c.filename.is_empty() && c.filename.len() <= MAX_FILENAME);
                    prop_assert!(c.relative_path.len() <= MAX_RELATIVE_PATH.max(MAX_FILENAME));
                    prop_assert!(c.mime.len() <= MAX_TYPE);
                    for s in [&c.identifier, &c.filename, &c.relative_path, &c.mime] {
                        prop_assert!(!s.chars().any(char::is_control), "{:?}", s);
                    }
                }
            }
        }
    }

    /// Pairs encoded as a browser encodes a form come back exactly.
    #[test]
    fn url_encoded_pairs_round_trip(
        pairs in prop::collection::vec((any::<String>(), any::<String>()), 0..20)
    ) {
        let encoded = serde_urlencoded::to_string(&pairs).unwrap();
        prop_assert_eq!(owned(parse_query(&encoded).unwrap()), pairs.clone());
        // The same with every byte percent-encoded (and `%20` rather than `+` for spaces).
        let strict: String = pairs
            .iter()
            .map(|(k, v)| {
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                format!("{}={}", enc(k), enc(v))
            })
            .collect::<Vec<_>>()
            .join("&");
        prop_assert_eq!(owned(parse_query(&strict).unwrap()), pairs);
    }

    /// Any percent-escape that does not decode to UTF-8, and any `%` without two hex digits,
    /// is refused rather than replaced.
    #[test]
    fn bad_escapes_are_refused(
        prefix in "[a-z]{0,5}",
        bad in prop_oneof![
            Just("%".to_string()),
            "%[0-9a-fA-F]",
            "%[g-zG-Z][0-9a-fA-F]",
            "%[0-9a-fA-F][g-zG-Z]",
            // A lone continuation byte, or a lead byte with no continuation.
            "%[89abAB][0-9a-fA-F]",
            "%[cdCD][0-9a-fA-F]",
            "%[fF][89a-fA-F]",
        ],
        in_key in any::<bool>(),
    ) {
        let raw = if in_key {
            format!("{prefix}{bad}=1")
        } else {
            format!("k={prefix}{bad}")
        };
        prop_assert!(parse_query(&raw).is_err(), "{} was accepted", raw);
    }

    /// A name given twice (under any of its aliases, in the query, the form or both) with
    /// different values is an error; with the same value it is not.
    #[test]
    fn a_parameter_given_twice_with_different_values_is_refused(
        group in prop::sample::select(all_groups()),
        i in any::<prop::sample::Index>(),
        j in any::<prop::sample::Index>(),
        a in "[a-zA-Z0-9._ -]{0,12}",
        b in "[a-zA-Z0-9._ -]{0,12}",
        placement in 0u8..3,
        noise in prop::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,6}"), 0..5),
    ) {
        let (n1, n2) = (group[i.index(group.len())], group[j.index(group.len())]);
        let mut p = Params::default();
        for (k, v) in &noise {
            p.query.push((k.clone().into(), v.clone().into()));
        }
        // Both in the query, both in the form, or one in each.
        match placement {
            0 => {
                p.query.push((n1.into(), a.clone().into()));
                p.query.push((n2.into(), b.clone().into()));
            }
            1 => {
                p.form.push((n1.into(), a.clone()));
                p.form.push((n2.into(), b.clone()));
            }
            _ => {
                p.form.push((n1.into(), a.clone()));
                p.query.push((n2.into(), b.clone().into()));
            }
        }
        let got = p.get(group);
        if a == b {
            prop_assert_eq!(got.unwrap(), Some(a.as_str()));
        } else {
            let e = got.unwrap_err();
            prop_assert_eq!(e.status().as_u16(), 400);
            prop_assert_eq!(e.code(), "invalid_parameter");
            // And the chunk as a whole is refused.
            prop_assert!(p.chunk(None).is_err());
        }
    }

    /// Through the real query parser too: `k=a&k=b` is refused for every chunk parameter.
    #[test]
    fn duplicate_query_keys_are_refused_by_the_chunk_parser(
        group in prop::sample::select(all_groups()),
        a in "[a-z0-9]{1,8}",
        b in "[a-z0-9]{1,8}",
    ) {
        prop_assume!(a != b);
        let base = [
            ("resumableChunkNumber", "1"),
            ("resumableChunkSize", "10"),
            ("resumableCurrentChunkSize", "10"),
            ("resumableTotalSize", "10"),
            ("resumableTotalChunks", "1"),
            ("resumableIdentifier", "id"),
            ("resumableFilename", "f.txt"),
            ("resumableRelativePath", "f.txt"),
            ("resumableType", "text/plain"),
        ];
        let mut pairs: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| !group.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.push((group[0].to_string(), a));
        pairs.push((group[group.len() - 1].to_string(), b));
        let raw = serde_urlencoded::to_string(&pairs).unwrap();
        let err = Params::from_query(Some(&raw)).unwrap().chunk(None).unwrap_err();
        prop_assert_eq!(err.status().as_u16(), 400);
    }
}

/// The sizes the cutting rule gives: `T = max(floor(S/cs), 1)` or, with `force`, ceil.
fn cut(s: u64, cs: u64, force: bool) -> Vec<u64> {
    let t = if force {
        s.div_ceil(cs).max(1)
    } else {
        (s / cs).max(1)
    };
    (1..=t)
        .map(|n| if n < t { cs } else { s - (t - 1) * cs })
        .collect()
}

/// How a client describes its chunks.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Resumable.js / Flow.js: chunk size, count and current size declared.
    Full,
    /// Chunk size declared, but no count and no current size (a minimal client).
    SizeOnly,
    /// Twake names: count and total size only; the chunk size is learnt.
    Twake,
}

fn declared(style: Style, n: u64, s: u64, cs: u64, t: u64, len: u64) -> Declared {
    match style {
        Style::Full => Declared {
            number: n,
            total_size: s,
            chunk_size: Some(cs),
            total_chunks: Some(t),
            current_size: Some(len),
        },
        Style::SizeOnly => Declared {
            number: n,
            total_size: s,
            chunk_size: Some(cs),
            total_chunks: None,
            current_size: None,
        },
        Style::Twake => Declared {
            number: n,
            total_size: s,
            chunk_size: None,
            total_chunks: Some(t),
            current_size: None,
        },
    }
}

fn admits(e: Expect, len: u64) -> bool {
    match e {
        Expect::Exactly(x) => len == x,
        Expect::OneOf(a, b) => len == a || len == b,
        Expect::AtMost(m) => len <= m,
    }
}

/// A geometry and an arrival order: `(S, cs, force, style, order)`.
fn upload() -> impl Strategy<Value = (u64, u64, bool, Style, Vec<u64>)> {
    (1u64..5_000, 0u64..40, any::<bool>())
        .prop_flat_map(|(cs, k, force)| {
            // S from 0 up to ~40 chunks, often right at a multiple of cs (where both modes meet).
            let s = prop_oneof![
                0..=(k * cs + cs - 1),
                Just(k * cs),
                Just((k * cs).saturating_sub(1)),
                Just(k * cs + 1),
            ];
            (Just(cs), s, Just(force))
        })
        .prop_flat_map(|(cs, s, force)| {
            let t = cut(s, cs, force).len() as u64;
            let order = Just((1..=t).collect::<Vec<u64>>()).prop_shuffle();
            let style = prop_oneof![Just(Style::Full), Just(Style::SizeOnly), Just(Style::Twake)];
            (Just(s), Just(cs), Just(force), style, order)
        })
}

proptest! {
    #![proptest_config(config(384))]

    /// Every chunk the cutting rule makes is accepted, in any order; the count is never wrong
    /// on the way (so the file cannot complete early), and is known once every chunk is in.
    #[test]
    fn every_cut_is_accepted_in_any_order((s, cs, force, style, order) in upload()) {
        let sizes = cut(s, cs, force);
        let t = sizes.len() as u64;
        let mut shape = Shape::new(s);
        for (k, &n) in order.iter().enumerate() {
            let len = sizes[n as usize - 1];
            let d = declared(style, n, s, cs, t, len);
            let merged = shape
                .merge(&d)
                .map_err(|e| TestCaseError::fail(format!("merge chunk {n} ({len} B): {e}")))?;
            prop_assert!(
                admits(merged.expect(n), len),
                "expect({}) = {:?} refuses {} bytes", n, merged.expect(n), len
            );
            shape = merged
                .settle(n, len)
                .map_err(|e| TestCaseError::fail(format!("settle chunk {n} ({len} B): {e}")))?;
            // Never a wrong count or chunk size, at any point.
            prop_assert!(shape.total_chunks.is_none() || shape.total_chunks == Some(t),
                "after {} chunks: {:?}", k + 1, shape);
            prop_assert!(shape.chunk_size.is_none() || shape.chunk_size == Some(cs) || t == 1,
                "after {} chunks: {:?}", k + 1, shape);
            prop_assert_eq!(shape.total_size, s);
        }
        // Every chunk is in: the count is known and is the real one.
        prop_assert_eq!(shape.total_chunks, Some(t), "{:?}", shape);
        // And the bytes add up.
        prop_assert_eq!(sizes.iter().sum::<u64>(), s);
        // The same chunks again are still accepted (a resent chunk, a probe).
        for &n in &order {
            let len = sizes[n as usize - 1];
            let m = shape.merge(&declared(style, n, s, cs, t, len)).unwrap();
            prop_assert_eq!(m.settle(n, len).unwrap(), shape);
        }
        // Nothing past the last chunk.
        prop_assert!(shape.merge(&declared(style, t + 1, s, cs, t, 1)).is_err());
    }

    /// A chunk whose size no cut of this file can give is refused, whether it is declared or
    /// only arrives, at any point of the upload.
    #[test]
    fn wrong_sizes_are_refused(
        (s, cs, force, style, order) in upload(),
        at in any::<prop::sample::Index>(),
        victim in any::<prop::sample::Index>(),
        delta in prop_oneof![1u64..3, 1u64..10_000, Just(u64::MAX / 2)],
        longer in any::<bool>(),
    ) {
        let sizes = cut(s, cs, force);
        let t = sizes.len() as u64;
        // The other mode's sizes are legitimate while the mode is open.
        let other = cut(s, cs, !force);
        let n = victim.index(t as usize) as u64 + 1;
        let good = sizes[n as usize - 1];
        let wrong = if longer { good.saturating_add(delta) } else { good.saturating_sub(delta) };
        prop_assume!(wrong != good);
        prop_assume!(other.get(n as usize - 1) != Some(&wrong));
        let mut shape = Shape::new(s);
        // Some chunks arrive first (never `n` itself).
        let before = at.index(order.len() + 1);
        for &m in order.iter().take(before).filter(|&&m| m != n) {
            let len = sizes[m as usize - 1];
            shape = shape.merge(&declared(style, m, s, cs, t, len)).unwrap()
                .settle(m, len).unwrap();
        }
        // With Twake names the chunk size is unknown until a chunk reveals it: a size that
        // another cut of the same file gives is legitimate then.
        if matches!(style, Style::Twake) && shape.chunk_size.is_none() && t > 1 {
            return Ok(());
        }
        // Declared with the wrong size: refused by merge.
        if matches!(style, Style::Full) {
            let d = declared(style, n, s, cs, t, wrong);
            prop_assert!(shape.merge(&d).is_err(), "declared {} bytes for chunk {}", wrong, n);
        }
        // Declared right (or not declared) but the wrong bytes arrive: refused by settle.
        let merged = shape.merge(&declared(style, n, s, cs, t, good)).unwrap();
        prop_assert!(merged.settle(n, wrong).is_err(), "{} bytes arrived for chunk {}", wrong, n);
    }

    /// No declaration, however absurd, makes the geometry panic (overflow, division by zero).
    #[test]
    fn the_geometry_never_panics(
        s in prop_oneof![any::<u64>(), 0u64..100, Just(u64::MAX)],
        n in prop_oneof![any::<u64>(), 0u64..5, Just(u64::MAX)],
        cs in prop::option::of(prop_oneof![any::<u64>(), 0u64..100, Just(u64::MAX)]),
        t in prop::option::of(prop_oneof![any::<u64>(), 0u64..100, Just(1_000_000_000_000u64)]),
        cur in prop::option::of(prop_oneof![any::<u64>(), 0u64..100]),
        len in prop_oneof![any::<u64>(), 0u64..100],
        known_cs in prop::option::of(1u64..100),
        known_t in prop::option::of(1u64..100),
    ) {
        let d = Declared { number: n, total_size: s, chunk_size: cs, total_chunks: t, current_size: cur };
        for start in [
            Shape::new(s),
            Shape { total_size: s, chunk_size: known_cs, total_chunks: None },
            Shape { total_size: s, chunk_size: None, total_chunks: known_t },
        ] {
            if let Ok(m) = start.merge(&d) {
                let _ = m.expect(n).max();
                let _ = m.settle(n, len);
                // A merged shape never names a chunk past its count.
                if let Some(kt) = m.total_chunks {
                    prop_assert!(n >= 1 && n <= kt);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Whatever the header, the range is inside the file, and never panics.
    #[test]
    fn ranges_stay_inside_the_file(
        value in prop_oneof![
            any::<String>(),
            "(bytes|BYTES|items)?=?[ ]?[0-9]{0,22}[ ]?-?[ ]?[0-9]{0,22}(,[0-9]{0,3}-[0-9]{0,3})?",
            "bytes=-?[0-9]{0,21}",
        ],
        len in prop_oneof![any::<u64>(), 0u64..100, Just(0u64), Just(u64::MAX)],
    ) {
        match parse_range(&value, len) {
            RangeSpec::Partial(a, b) => {
                prop_assert!(a <= b && b < len, "{:?} on {} bytes gave {}-{}", value, len, a, b);
            }
            RangeSpec::Full | RangeSpec::Unsatisfiable => {}
        }
    }

    /// Well-formed single ranges mean what RFC 9110 says.
    #[test]
    fn well_formed_ranges_mean_what_they_say(
        first in prop_oneof![0u64..200, any::<u64>()],
        last in prop::option::of(prop_oneof![0u64..200, any::<u64>()]),
        suffix in prop_oneof![0u64..200, any::<u64>()],
        len in prop_oneof![0u64..150, any::<u64>()],
    ) {
        let v = match last {
            Some(l) => format!("bytes={first}-{l}"),
            None => format!("bytes={first}-"),
        };
        let want = match last {
            Some(l) if l < first => RangeSpec::Full,
            _ if first >= len => RangeSpec::Unsatisfiable,
            Some(l) => RangeSpec::Partial(first, l.min(len - 1)),
            None => RangeSpec::Partial(first, len - 1),
        };
        prop_assert_eq!(parse_range(&v, len), want, "{}", v);
        let want = if suffix == 0 || len == 0 {
            RangeSpec::Unsatisfiable
        } else {
            RangeSpec::Partial(len - suffix.min(len), len - 1)
        };
        prop_assert_eq!(parse_range(&format!("bytes=-{suffix}"), len), want);
    }

    /// No file name can break out of `Content-Disposition`.
    #[test]
    fn content_disposition_is_always_a_safe_header(
        name in prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop::sample::select(vec![
                    "\"", ";", "\\", "/", "..", "\r", "\n", "\0", "%", "'", "*", "=", " ",
                    "filename=", "a", "é", "\u{202e}", "\u{85}", "\u{7f}", "\t", ".html",
                ]),
                0..16,
            )
            .prop_map(|v| v.concat()),
        ],
    ) {
        let cd = content_disposition(&name);
        prop_assert!(!cd.contains('\r') && !cd.contains('\n') && !cd.contains('\0'), "{:?}", cd);
        prop_assert!(hyper::header::HeaderValue::from_str(&cd).is_ok(), "{:?}", cd);
        prop_assert!(cd.is_ascii(), "{:?}", cd);
        // `attachment; filename="FALLBACK"; filename*=UTF-8''EXACT`, nothing else.
        let rest = cd.strip_prefix("attachment; filename=\"").unwrap();
        let (fallback, exact) = rest.split_once("\"; filename*=UTF-8''").unwrap();
        for bad in ['"', ';', '\\', '/'] {
            prop_assert!(!fallback.contains(bad), "fallback {:?} holds {:?}", fallback, bad);
        }
        prop_assert!(fallback.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{:?}", fallback);
        prop_assert!(!fallback.is_empty());
        prop_assert!(fallback != "." && fallback != "..", "{:?}", fallback);
        // The exact name is an RFC 8187 attr-char / pct-encoded value...
        prop_assert!(
            exact.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)),
            "{:?}", exact
        );
        // ...that decodes to the name's last path segment.
        let decoded = percent_encoding::percent_decode_str(exact).decode_utf8().unwrap();
        prop_assert!(!decoded.contains('/') && !decoded.contains('\\'));
        let base = name.rsplit(['/', '\\']).next().unwrap();
        if !base.is_empty() && base != "." && base != ".." {
            prop_assert_eq!(decoded.as_ref(), base);
        } else {
            prop_assert_eq!(decoded.as_ref(), "download");
        }
        // The fallback has exactly one character per character of the name.
        prop_assert_eq!(fallback.chars().count(), decoded.chars().count());
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every u64 written in decimal comes back; anything else that is not plain ASCII digits
    /// (signs, spaces, other scripts' digits, overflow) is a 400, never a panic or a wrap.
    #[test]
    fn numbers_round_trip_and_nothing_else_parses(
        n in any::<u64>(),
        junk in prop_oneof![
            any::<String>(),
            "[-+ 0-9a-fx.,e\u{0660}-\u{0669}]{0,24}",
            "[0-9]{20,40}",
        ],
    ) {
        prop_assert_eq!(parse_number("n", &n.to_string()).unwrap(), n);
        prop_assert_eq!(parse_number("n", &format!("000{n}")).unwrap(), n);
        match parse_number("n", &junk) {
            Ok(v) => {
                prop_assert!(!junk.is_empty() && junk.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(Some(v), junk.parse::<u64>().ok());
            }
            Err(e) => prop_assert_eq!(e.status().as_u16(), 400),
        }
    }

    /// A client string is kept exactly, or refused: never altered, never over its bound, never
    /// with a control character.
    #[test]
    fn client_strings_are_kept_exactly_or_refused(v in any::<String>(), max in 0usize..64) {
        match clean_text("f", &v, max) {
            Ok(kept) => {
                prop_assert_eq!(&kept, &v);
                prop_assert!(kept.len() <= max);
                prop_assert!(!kept.chars().any(char::is_control));
            }
            Err(e) => {
                prop_assert_eq!(e.code(), "invalid_parameter");
                prop_assert!(v.len() > max || v.chars().any(char::is_control));
            }
        }
    }

    /// The served type is always a valid header value: the client's plain `type/subtype`
    /// (lowercased), or `application/octet-stream`.
    #[test]
    fn content_types_are_always_safe(
        mime in prop_oneof![any::<String>(), "[a-zA-Z0-9!#$&^_.+ ;=/\r\n\"-]{0,40}"],
    ) {
        let t = safe_content_type(&mime);
        prop_assert!(hyper::header::HeaderValue::from_str(&t).is_ok(), "{:?}", t);
        prop_assert!(t == "application/octet-stream" || t == mime.to_ascii_lowercase());
        prop_assert!(!t.contains(';') && !t.contains(' ') && t.matches('/').count() == 1);
    }
}
