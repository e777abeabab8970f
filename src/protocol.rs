//! One parser for every dialect: `resumable*` names, `flow*` names and the Twake query names all
//! become one [`ChunkParams`].
//!
//! Parameters come from the multipart form fields placed before the file part, falling back to
//! the query string (Flow.js puts multipart parameters only in the form; Resumable.js puts them in
//! both; octet bodies and probes carry them only in the query). A name given twice with different
//! values, whether in one place or across form and query, is refused: chunkd cannot know which
//! one the client meant.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::geometry::Declared;

/// Longest accepted identifier, in bytes.
pub const MAX_IDENTIFIER: usize = 1024;
/// Longest accepted file name, in bytes.
pub const MAX_FILENAME: usize = 1024;
/// Longest accepted relative path, in bytes.
pub const MAX_RELATIVE_PATH: usize = 4096;
/// Longest accepted MIME type, in bytes.
pub const MAX_TYPE: usize = 255;

/// Every name a parameter goes by, in the order the dialects are tried.
pub mod names {
    pub const NUMBER: &[&str] = &["resumableChunkNumber", "flowChunkNumber", "chunk_number"];
    pub const CHUNK_SIZE: &[&str] = &["resumableChunkSize", "flowChunkSize"];
    pub const CURRENT_SIZE: &[&str] = &["resumableCurrentChunkSize", "flowCurrentChunkSize"];
    pub const TOTAL_SIZE: &[&str] = &["resumableTotalSize", "flowTotalSize", "total_size"];
    pub const TOTAL_CHUNKS: &[&str] = &["resumableTotalChunks", "flowTotalChunks", "total_chunks"];
    pub const IDENTIFIER: &[&str] = &["resumableIdentifier", "flowIdentifier"];
    pub const FILENAME: &[&str] = &["resumableFilename", "flowFilename", "filename"];
    pub const RELATIVE_PATH: &[&str] = &["resumableRelativePath", "flowRelativePath"];
    pub const TYPE: &[&str] = &["resumableType", "type"];
}

/// The key/value pairs of one request: form fields (before the file part) and the query string.
///
/// Query pairs borrow from the request's URI unless they had to be decoded: a probe's dozen
/// parameters would otherwise cost two dozen allocations, a large part of answering it.
#[derive(Debug, Default, Clone)]
pub struct Params<'q> {
    pub form: Vec<(String, String)>,
    pub query: Vec<(Cow<'q, str>, Cow<'q, str>)>,
}

impl<'q> Params<'q> {
    /// Parses a raw query string strictly (see [`parse_query`]).
    pub fn from_query(raw: Option<&'q str>) -> Result<Self> {
        Ok(Params {
            form: Vec::new(),
            query: parse_query(raw.unwrap_or(""))?,
        })
    }

    /// The one value given under any of `names`; form fields win over the query string.
    pub fn get(&self, names: &'static [&'static str]) -> Result<Option<&str>> {
        let label = names[0];
        fn pick<'a, K: AsRef<str> + 'a, V: AsRef<str> + 'a>(
            pairs: impl IntoIterator<Item = &'a (K, V)>,
            names: &[&str],
            label: &'static str,
        ) -> Result<Option<&'a str>> {
            // The lengths of `names`, as a set of bits: most keys are turned away by their
            // length alone (a chunk request looks up nine names among a dozen pairs).
            let lengths = names.iter().fold(0u64, |m, n| m | 1 << (n.len() % 64));
            let mut found: Option<&str> = None;
            for (k, v) in pairs {
                let (k, v) = (k.as_ref(), v.as_ref());
                if lengths & 1 << (k.len() % 64) != 0 && names.contains(&k) {
                    match found {
                        Some(prev) if prev != v => {
                            return Err(Error::invalid(label, "given twice with different values"));
                        }
                        _ => found = Some(v),
                    }
                }
            }
            Ok(found)
        }
        let form = pick(&self.form, names, label)?;
        let query = pick(&self.query, names, label)?;
        match (form, query) {
            (Some(f), Some(q)) if f != q => Err(Error::invalid(
                label,
                "the form field and the query string disagree",
            )),
            (f, q) => Ok(f.or(q)),
        }
    }

    pub fn number(&self, names: &'static [&'static str]) -> Result<Option<u64>> {
        self.get(names)?
            .map(|v| parse_number(names[0], v))
            .transpose()
    }

    pub fn text(&self, names: &'static [&'static str], max: usize) -> Result<Option<String>> {
        self.get(names)?
            .map(|v| clean_text(names[0], v, max))
            .transpose()
    }

    /// The identifier of the upload, for the status call and the probe.
    pub fn identifier(&self) -> Result<String> {
        let id = self
            .text(names::IDENTIFIER, MAX_IDENTIFIER)?
            .ok_or(Error::MissingParam("resumableIdentifier"))?;
        if id.is_empty() {
            return Err(Error::invalid("resumableIdentifier", "must not be empty"));
        }
        Ok(id)
    }

    /// Everything a probe or a chunk declares. `identifier` is given by the route for dialects
    /// that carry it in the path (Twake); otherwise it must be a parameter.
    pub fn chunk(&self, identifier: Option<String>) -> Result<ChunkParams> {
        let identifier = match identifier {
            Some(id) => id,
            None => self.identifier()?,
        };
        let number = self
            .number(names::NUMBER)?
            .ok_or(Error::MissingParam("resumableChunkNumber"))?;
        let total_size = self
            .number(names::TOTAL_SIZE)?
            .ok_or(Error::MissingParam("resumableTotalSize"))?;
        let filename = self
            .text(names::FILENAME, MAX_FILENAME)?
            .ok_or(Error::MissingParam("resumableFilename"))?;
        if filename.is_empty() {
            return Err(Error::invalid("resumableFilename", "must not be empty"));
        }
        let relative_path = self.text(names::RELATIVE_PATH, MAX_RELATIVE_PATH)?;
        let mime = self.text(names::TYPE, MAX_TYPE)?.unwrap_or_default();
        Ok(ChunkParams {
            identifier,
            declared: Declared {
                number,
                total_size,
                chunk_size: self.number(names::CHUNK_SIZE)?,
                total_chunks: self.number(names::TOTAL_CHUNKS)?,
                current_size: self.number(names::CURRENT_SIZE)?,
            },
            relative_path: relative_path.unwrap_or_else(|| filename.clone()),
            filename,
            mime,
        })
    }
}

/// One probe or chunk request, whatever dialect it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkParams {
    pub identifier: String,
    pub declared: Declared,
    pub filename: String,
    pub relative_path: String,
    /// The client's MIME type for the file; may be empty.
    pub mime: String,
}

/// Parses `application/x-www-form-urlencoded` strictly: a `%` not followed by two hex digits, or
/// bytes that are not UTF-8 after decoding, are errors rather than silently replaced characters.
///
/// `memchr` finds each pair, its `=` and whether it holds an escape; a part without one is
/// borrowed as it stands (a probe's query is parsed on every probe).
pub fn parse_query(raw: &str) -> Result<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    let mut out = Vec::with_capacity(16);
    let mut rest = raw;
    loop {
        let end = memchr::memchr(b'&', rest.as_bytes()).unwrap_or(rest.len());
        let pair = &rest[..end];
        if !pair.is_empty() {
            // Cut at an ASCII `=`, so always at a character boundary.
            let (k, v) = match memchr::memchr(b'=', pair.as_bytes()) {
                Some(e) => (&pair[..e], &pair[e + 1..]),
                None => (pair, ""),
            };
            // One scan of the pair spares most pairs the two scans of `decode_component`.
            let escaped = memchr::memchr2(b'%', b'+', pair.as_bytes()).is_some();
            out.push(if escaped {
                (decode_component(k)?, decode_component(v)?)
            } else {
                (Cow::Borrowed(k), Cow::Borrowed(v))
            });
            if out.len() > 256 {
                return Err(Error::invalid("query", "more than 256 parameters"));
            }
        }
        if end == rest.len() {
            return Ok(out);
        }
        rest = &rest[end + 1..];
    }
}

fn decode_component(s: &str) -> Result<Cow<'_, str>> {
    let bytes = s.as_bytes();
    if memchr::memchr2(b'%', b'+', bytes).is_none() {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&d| (d as char).to_digit(16));
                let byte = hex(i + 1)
                    .zip(hex(i + 2))
                    .map(|(hi, lo)| (hi * 16 + lo) as u8)
                    .ok_or_else(|| {
                        Error::invalid(
                            "query",
                            "bad percent-encoding (a % must be followed by two hex digits)",
                        )
                    })?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| Error::invalid("query", "not valid UTF-8 once decoded"))
}

/// Parses a decimal count: ASCII digits only, no sign, no overflow.
pub fn parse_number(name: &'static str, v: &str) -> Result<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            name,
            format!("`{}` is not a whole number", truncate(v, 40)),
        ));
    }
    v.parse::<u64>()
        .map_err(|_| Error::invalid(name, "the number is too large"))
}

/// Checks a client string that will be stored as data: bounded length, no control characters.
/// Client strings never become paths, so `/` and `..` are kept as the client sent them.
pub fn clean_text(name: &'static str, v: &str, max: usize) -> Result<String> {
    if v.len() > max {
        return Err(Error::invalid(name, format!("longer than {max} bytes")));
    }
    if has_control(v) {
        return Err(Error::invalid(name, "contains control characters"));
    }
    Ok(v.to_string())
}

/// Whether `v` holds a control character (`char::is_control`). Printable ASCII, which is what
/// clients send, is recognised without decoding a `char`, in a pass the compiler vectorises:
/// decoding every `char` was about 800 of the 7,700 instructions of parsing a probe's query
/// (callgrind).
fn has_control(v: &str) -> bool {
    let printable = v.bytes().fold(true, |ok, c| ok & (0x20..0x7f).contains(&c));
    !printable && v.chars().any(char::is_control)
}

fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Params<'_> {
        Params::from_query(Some(s)).unwrap()
    }

    #[test]
    fn all_dialects_become_one_request() {
        let r = q("resumableChunkNumber=2&resumableChunkSize=4&resumableCurrentChunkSize=6&resumableTotalSize=10&resumableIdentifier=10-a&resumableFilename=a%20b.txt&resumableRelativePath=d%2Fa%20b.txt&resumableType=text%2Fplain&resumableTotalChunks=2")
            .chunk(None)
            .unwrap();
        let f = q("flowChunkNumber=2&flowChunkSize=4&flowCurrentChunkSize=6&flowTotalSize=10&flowIdentifier=10-a&flowFilename=a+b.txt&flowRelativePath=d/a+b.txt&flowTotalChunks=2")
            .chunk(None)
            .unwrap();
        assert_eq!(r.declared, f.declared);
        assert_eq!(
            (r.filename.as_str(), r.relative_path.as_str()),
            ("a b.txt", "d/a b.txt")
        );
        assert_eq!(f.relative_path, "d/a b.txt");
        assert_eq!(r.mime, "text/plain");
        let t = q("chunk_number=1&total_chunks=2&total_size=10&filename=x&type=image%2Fpng")
            .chunk(Some("id".into()))
            .unwrap();
        assert_eq!(t.declared.chunk_size, None);
        assert_eq!(t.declared.total_chunks, Some(2));
        assert_eq!(t.mime, "image/png");
    }

    #[test]
    fn form_fields_win_and_conflicts_are_refused() {
        let mut p = q("resumableIdentifier=x");
        p.form.push(("flowIdentifier".into(), "x".into()));
        assert_eq!(p.identifier().unwrap(), "x");
        p.form.push(("resumableIdentifier".into(), "y".into()));
        assert!(p.identifier().is_err());
        assert!(q("flowIdentifier=a&flowIdentifier=b").identifier().is_err());
        assert_eq!(
            q("flowIdentifier=a&flowIdentifier=a").identifier().unwrap(),
            "a"
        );
        let mut p = q("resumableIdentifier=q");
        p.form.push(("resumableIdentifier".into(), "f".into()));
        assert!(p.identifier().is_err());
    }

    #[test]
    fn hostile_values_are_refused() {
        assert!(Params::from_query(Some("a=%zz")).is_err());
        assert!(Params::from_query(Some("a=%4")).is_err());
        // A sign is not a hex digit (`u8::from_str_radix` would take `+f` as 15).
        assert!(Params::from_query(Some("a=%+f")).is_err());
        assert!(Params::from_query(Some("a=%-1")).is_err());
        assert!(Params::from_query(Some("a=%ff%fe")).is_err());
        assert!(q("resumableIdentifier=a%00b").identifier().is_err());
        assert!(q("resumableIdentifier=a%0Ab").identifier().is_err());
        assert!(
            q(&format!(
                "resumableIdentifier={}",
                "a".repeat(MAX_IDENTIFIER + 1)
            ))
            .identifier()
            .is_err()
        );
        assert_eq!(
            q("resumableIdentifier=..%2F..%2Fetc").identifier().unwrap(),
            "../../etc"
        );
        for bad in ["-1", "+1", "1e3", "0x10", "", " 1", "18446744073709551616"] {
            assert!(parse_number("n", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_number("n", "18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn pairs_split_at_the_first_equals_and_borrow_unless_escaped() {
        let pairs = parse_query("&a=1=2&&b&c=&=d&e+f=g%26h&").unwrap();
        let plain: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            plain,
            [
                ("a", "1=2"),
                ("b", ""),
                ("c", ""),
                ("", "d"),
                ("e f", "g&h")
            ]
        );
        for (k, v) in &pairs[..4] {
            assert!(matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_))));
        }
        assert!(matches!(pairs[4].0, Cow::Owned(_)));
        assert!(parse_query("").unwrap().is_empty());
        assert_eq!(parse_query(&"x&".repeat(256)).unwrap().len(), 256);
        assert!(parse_query(&"x&".repeat(257)).is_err());
    }

    #[test]
    fn control_characters_are_found_as_char_finds_them() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            for v in [format!("{c}"), format!("ab{c}\u{a0}é")] {
                assert_eq!(has_control(&v), c.is_control(), "U+{:04X}", c as u32);
            }
        }
    }
}
