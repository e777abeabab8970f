//! The cutting rule shared by Resumable.js and Flow.js, as pure functions.
//!
//! A file of `S` bytes is cut into chunks of `cs` bytes; `T = max(round(S / cs), 1)` where
//! `round` is `floor` (the default) or `ceil` (`forceChunkSize`). Chunk `n < T` holds `cs`
//! bytes; chunk `T` holds `S - (T-1)·cs` bytes. What the server may not know up front:
//! * the mode: when `floor(S/cs) ≠ ceil(S/cs)` only a valid declared `T`, or the arrival of chunk
//!   `floor(S/cs)` or `ceil(S/cs)`, tells which;
//! * `cs` itself, with the Twake parameter names: it is learnt from the first non-final chunk,
//!   or computed from the final chunk's length as `(S - L) / (T-1)`;
//! * `T` from a Resumable.js 1.1.0 request sent while the library was still building its chunk
//!   list (one `setTimeout` per chunk): such a count is below `floor(S/cs)` and is ignored.
//!
//! [`Shape`] is what is known of an upload. [`Shape::merge`] adds a request's declarations,
//! [`Shape::expect`] says what the chunk must hold, and [`Shape::settle`] learns from the bytes
//! that actually arrived. Every function checks everything it is given.

use crate::error::{Error, Result};

/// What is known of an upload's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub total_size: u64,
    pub chunk_size: Option<u64>,
    pub total_chunks: Option<u64>,
}

/// The geometry a request declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub number: u64,
    pub total_size: u64,
    pub chunk_size: Option<u64>,
    pub total_chunks: Option<u64>,
    pub current_size: Option<u64>,
}

/// What the bytes of one chunk must be, as far as is known before reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Exactly(u64),
    /// Either a full chunk (`ceil` mode) or the long last chunk (`floor` mode).
    OneOf(u64, u64),
    /// Twake names: a non-final chunk whose size is not known yet.
    AtMost(u64),
}

impl Expect {
    /// The largest number of bytes this chunk may hold.
    pub fn max(self) -> u64 {
        match self {
            Expect::Exactly(n) | Expect::AtMost(n) => n,
            Expect::OneOf(a, b) => a.max(b),
        }
    }
}

/// `(floor, ceil)` chunk counts for `size` bytes in chunks of `cs`.
pub fn counts(size: u64, cs: u64) -> (u64, u64) {
    ((size / cs).max(1), size.div_ceil(cs).max(1))
}

/// The size of chunk `n` of `t` when the geometry is fully known.
fn size_of(size: u64, cs: u64, t: u64, n: u64) -> u64 {
    if n < t { cs } else { size - (t - 1) * cs }
}

impl Shape {
    /// The shape of a new upload, from the request that creates it.
    pub fn new(total_size: u64) -> Self {
        Shape {
            total_size,
            chunk_size: None,
            total_chunks: None,
        }
    }

    /// Adds what a request declares. A declaration that contradicts the upload is another file
    /// ([`Error::IdentityConflict`]); one that breaks the cutting rule is [`Error::Geometry`].
    pub fn merge(&self, d: &Declared) -> Result<Shape> {
        let s = self.total_size;
        if d.total_size != s {
            return Err(Error::IdentityConflict(format!(
                "this identifier is in use by a file of {s} bytes, not {}",
                d.total_size
            )));
        }
        if d.chunk_size == Some(0) {
            return Err(Error::Geometry(
                "the chunk size must be at least 1 byte".into(),
            ));
        }
        if d.total_chunks == Some(0) {
            return Err(Error::Geometry(
                "the total number of chunks must be at least 1".into(),
            ));
        }
        if d.number == 0 {
            return Err(Error::Geometry("chunk numbers start at 1".into()));
        }
        let cs = match (self.chunk_size, d.chunk_size) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::IdentityConflict(format!(
                    "this identifier is in use by an upload with chunks of {a} bytes, not {b}"
                )));
            }
            (a, b) => a.or(b),
        };
        let mut t = self.total_chunks;
        if let Some(dt) = d.total_chunks {
            let valid = match cs {
                Some(cs) => {
                    let (f, c) = counts(s, cs);
                    if dt == f || dt == c {
                        true
                    } else if dt < f && d.number <= dt {
                        // Resumable.js 1.1.0 still building its chunk list: not a count.
                        false
                    } else {
                        return Err(Error::Geometry(format!(
                            "{s} bytes in chunks of {cs} bytes make {f}{} chunks, not {dt}",
                            if f == c {
                                String::new()
                            } else {
                                format!(" or {c}")
                            }
                        )));
                    }
                }
                None if dt > s.max(1) => {
                    return Err(Error::Geometry(format!(
                        "{s} bytes cannot be cut into {dt} chunks of at least one byte"
                    )));
                }
                None => true,
            };
            if valid {
                match t {
                    Some(kt) if kt != dt => {
                        return Err(Error::IdentityConflict(format!(
                            "this identifier is in use by an upload of {kt} chunks, not {dt}"
                        )));
                    }
                    _ => t = Some(dt),
                }
            }
        }
        if let Some(cs) = cs {
            let (f, c) = counts(s, cs);
            match t {
                Some(kt) if kt != f && kt != c => {
                    return Err(Error::Geometry(format!(
                        "{s} bytes in chunks of {cs} bytes cannot make {kt} chunks"
                    )));
                }
                None if f == c => t = Some(f),
                _ => {}
            }
            let last = t.unwrap_or(c);
            if d.number > last {
                return Err(Error::Geometry(format!(
                    "chunk {} is past the last chunk ({last})",
                    d.number
                )));
            }
        } else {
            match t {
                None => return Err(Error::MissingParam("resumableTotalChunks")),
                Some(t) if d.number > t => {
                    return Err(Error::Geometry(format!(
                        "chunk {} is past the last chunk ({t})",
                        d.number
                    )));
                }
                _ => {}
            }
        }
        let merged = Shape {
            total_size: s,
            chunk_size: cs,
            total_chunks: t,
        };
        if let Some(cur) = d.current_size {
            let ok = match merged.expect(d.number) {
                Expect::Exactly(e) => cur == e,
                Expect::OneOf(a, b) => cur == a || cur == b,
                Expect::AtMost(m) => cur <= m && (cur > 0 || s == 0),
            };
            if !ok {
                return Err(Error::Geometry(format!(
                    "chunk {} cannot hold {cur} bytes in this geometry ({})",
                    d.number,
                    merged.describe_chunk(d.number)
                )));
            }
        }
        Ok(merged)
    }

    /// What chunk `n` must hold. `n` must have passed [`Shape::merge`].
    pub fn expect(&self, n: u64) -> Expect {
        let s = self.total_size;
        match (self.chunk_size, self.total_chunks) {
            (Some(cs), Some(t)) => Expect::Exactly(size_of(s, cs, t, n)),
            (Some(cs), None) => {
                let (f, _) = counts(s, cs);
                if n < f {
                    Expect::Exactly(cs)
                } else if n == f {
                    Expect::OneOf(cs, size_of(s, cs, f, n))
                } else {
                    Expect::Exactly(size_of(s, cs, f + 1, n))
                }
            }
            (None, Some(1)) => Expect::Exactly(s),
            (None, Some(t)) => {
                if n < t {
                    // A chunk of T-1 full ones can be no larger than S / (T-1).
                    Expect::AtMost(s / (t - 1))
                } else {
                    Expect::AtMost(s)
                }
            }
            (None, None) => Expect::AtMost(s),
        }
    }

    /// Learns from chunk `n` having held `len` bytes: checks it against what is known, and returns
    /// the shape with whatever `len` reveals (the chunk size, the count).
    pub fn settle(&self, n: u64, len: u64) -> Result<Shape> {
        let s = self.total_size;
        let mut out = *self;
        match (self.chunk_size, self.total_chunks) {
            (Some(cs), None) => {
                let (f, c) = counts(s, cs);
                if n == f && len == size_of(s, cs, f, n) && len != cs {
                    out.total_chunks = Some(f);
                } else if n >= f && n <= c && len == size_of(s, cs, c, n) {
                    // A full chunk at `f`, or chunk `c` itself, exists only with ceil.
                    if n == c || len == cs {
                        out.total_chunks = Some(c);
                    }
                }
            }
            (None, Some(t)) if t > 1 => {
                let cs = if n < t {
                    len
                } else if len <= s && (s - len).is_multiple_of(t - 1) {
                    (s - len) / (t - 1)
                } else {
                    0
                };
                let (f, c) = if cs > 0 { counts(s, cs) } else { (0, 0) };
                if cs == 0 || (t != f && t != c) {
                    return Err(Error::Geometry(format!(
                        "chunk {n} of {t} cannot hold {len} bytes of a {s}-byte file"
                    )));
                }
                out.chunk_size = Some(cs);
            }
            _ => {}
        }
        let ok = match out.expect(n) {
            Expect::Exactly(e) => len == e,
            Expect::OneOf(a, b) => len == a || len == b,
            Expect::AtMost(m) => len <= m,
        };
        if !ok {
            return Err(Error::Geometry(format!(
                "chunk {n} held {len} bytes, but this geometry needs {}",
                out.describe_chunk(n)
            )));
        }
        Ok(out)
    }

    fn describe_chunk(&self, n: u64) -> String {
        match self.expect(n) {
            Expect::Exactly(e) => format!("{e} bytes"),
            Expect::OneOf(a, b) => format!("{a} or {b} bytes"),
            Expect::AtMost(m) => format!("at most {m} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64, s: u64, cs: Option<u64>, t: Option<u64>, cur: Option<u64>) -> Declared {
        Declared {
            number: n,
            total_size: s,
            chunk_size: cs,
            total_chunks: t,
            current_size: cur,
        }
    }

    /// Runs a whole upload through merge/expect/settle with the real cutting rule.
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

    #[test]
    fn both_modes_are_accepted_in_any_order() {
        for (s, cs) in [
            (10, 4),
            (12, 4),
            (3, 4),
            (0, 4),
            (1, 1),
            (1_048_577, 1_048_576),
        ] {
            for force in [false, true] {
                let sizes = cut(s, cs, force);
                let t = sizes.len() as u64;
                for order in [false, true] {
                    let mut shape = Shape::new(s);
                    let mut ns: Vec<u64> = (1..=t).collect();
                    if order {
                        ns.reverse();
                    }
                    for n in ns {
                        let len = sizes[n as usize - 1];
                        let m = shape.merge(&d(n, s, Some(cs), Some(t), Some(len))).unwrap();
                        shape = m.settle(n, len).unwrap();
                    }
                    assert_eq!(shape.total_chunks, Some(t), "s={s} cs={cs} force={force}");
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_and_counts_are_rejected() {
        let s = Shape::new(10);
        assert!(matches!(
            s.merge(&d(1, 10, Some(4), Some(4), None)),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(3, 10, Some(4), Some(2), None)),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(1, 10, Some(4), Some(2), Some(3))),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(2, 10, Some(4), Some(2), Some(4))),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(0, 10, Some(4), Some(2), None)),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(1, 10, Some(0), Some(2), None)),
            Err(Error::Geometry(_))
        ));
        assert!(matches!(
            s.merge(&d(1, 11, Some(4), Some(2), None)),
            Err(Error::IdentityConflict(_))
        ));
        let m = s.merge(&d(2, 10, Some(4), Some(2), None)).unwrap();
        assert!(m.settle(2, 5).is_err());
        assert!(m.settle(2, 6).is_ok());
        // Known count, another count declared: another file.
        assert!(matches!(
            m.merge(&d(1, 10, Some(4), Some(3), None)),
            Err(Error::IdentityConflict(_))
        ));
    }

    #[test]
    fn a_fluctuating_count_from_resumable_1_1_0_is_ignored() {
        // 100 bytes in chunks of 10 while the client had built only 3 chunk objects.
        let s = Shape::new(100)
            .merge(&d(2, 100, Some(10), Some(3), Some(10)))
            .unwrap();
        assert_eq!(s.total_chunks, Some(10));
        // With an undecided mode the count stays open.
        let s = Shape::new(105)
            .merge(&d(2, 105, Some(10), Some(3), None))
            .unwrap();
        assert_eq!(s.total_chunks, None);
        assert_eq!(s.expect(10), Expect::OneOf(10, 15));
        assert_eq!(s.settle(10, 15).unwrap().total_chunks, Some(10));
        assert_eq!(s.settle(10, 10).unwrap().total_chunks, Some(11));
        assert_eq!(s.settle(11, 5).unwrap().total_chunks, Some(11));
        assert!(s.settle(10, 12).is_err());
        // A count above the valid ones is never a fluctuation.
        assert!(
            Shape::new(105)
                .merge(&d(2, 105, Some(10), Some(30), None))
                .is_err()
        );
    }

    #[test]
    fn twake_names_learn_the_chunk_size() {
        // 149,999,999 bytes in 2 chunks of 50,000,000 (floor): the last holds 99,999,999.
        let s = Shape::new(149_999_999)
            .merge(&d(2, 149_999_999, None, Some(2), None))
            .unwrap();
        assert_eq!(s.expect(2), Expect::AtMost(149_999_999));
        let learnt = s.settle(2, 99_999_999).unwrap();
        assert_eq!(learnt.chunk_size, Some(50_000_000));
        assert!(learnt.settle(1, 50_000_000).is_ok());
        assert!(learnt.settle(1, 50_000_001).is_err());
        // Or from the first chunk.
        let first = s.settle(1, 50_000_000).unwrap();
        assert_eq!(first.expect(2), Expect::Exactly(99_999_999));
        // Sizes no cut can make.
        assert!(s.settle(1, 10).is_err()); // 149,999,999 / 10 is far more than 2 chunks
        assert!(s.settle(2, 149_999_999).is_err());
        let one = Shape::new(5).merge(&d(1, 5, None, Some(1), None)).unwrap();
        assert!(one.settle(1, 4).is_err());
        assert!(one.settle(1, 5).is_ok());
        assert!(matches!(
            Shape::new(5).merge(&d(1, 5, None, None, None)),
            Err(Error::MissingParam(_))
        ));
    }
}
