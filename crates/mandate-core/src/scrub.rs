//! Keeping the injected upstream key from coming back (issue 10, item 19).
//!
//! An upstream that echoes request headers (debug endpoints, error pages,
//! `httpbin`-style APIs) would hand the key the proxy injected back to the
//! agent. The proxy runs every response header and body through a
//! [`Scrubber`], which replaces each occurrence of a secret with a marker of
//! the same length (so `Content-Length` stays true), also when an
//! occurrence is split across body chunks: it holds back the last
//! `longest secret - 1` bytes of each chunk until the next one arrives.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a secret is replaced with, padded with `*` to its length (a secret
/// shorter than this becomes `*`s).
pub const MARKER: &[u8] = b"[REDACTED]";

/// Replaces secrets in a stream of bytes.
pub struct Scrubber {
    /// The secrets, longest first, none empty.
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// First bytes of the secrets, to skip ahead quickly.
    firsts: Vec<u8>,
    /// Bytes held back: they may begin a secret that the next chunk ends.
    tail: Zeroizing<Vec<u8>>,
    found: bool,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.needles.len())
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for `secrets` (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for s in secrets {
            if !s.is_empty() && !needles.iter().any(|n| n.as_slice() == s) {
                needles.push(Zeroizing::new(s.to_vec()));
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut firsts: Vec<u8> = needles.iter().map(|n| n[0]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        Scrubber {
            needles,
            firsts,
            tail: Zeroizing::new(Vec::new()),
            found: false,
        }
    }

    /// Whether a secret was found (and replaced) so far.
    pub fn reflected(&self) -> bool {
        self.found
    }

    /// Bytes held back so far (they come out with the next chunk or at the end).
    pub fn held(&self) -> usize {
        self.tail.len()
    }

    /// The next chunk of a stream, scrubbed; some of its last bytes may be
    /// held back until the next call or [`Scrubber::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut buf = Zeroizing::new(std::mem::take(&mut *self.tail));
        buf.extend_from_slice(chunk);
        let longest = self.needles.first().map_or(0, |n| n.len());
        let hold_from = buf.len().saturating_sub(longest.saturating_sub(1));
        let (out, used) = self.replace(&buf, hold_from);
        self.tail.extend_from_slice(&buf[used..]);
        out
    }

    /// The end of the stream: whatever was held back, scrubbed.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = Zeroizing::new(std::mem::take(&mut *self.tail));
        self.replace(&buf, buf.len()).0
    }

    /// A value on its own (a header), scrubbed, if it held a secret.
    pub fn scrub(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        let before = self.found;
        self.found = false;
        let (out, _) = self.replace(value, value.len());
        let hit = self.found;
        self.found |= before;
        hit.then_some(out)
    }

    /// Copies `buf[..end]` (and any secret that starts before `end`, which
    /// must then fit in `buf`), replacing secrets; returns the copy and how
    /// many bytes of `buf` it covers.
    fn replace(&mut self, buf: &[u8], end: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < end {
            let next = buf[i..end]
                .iter()
                .position(|b| self.firsts.binary_search(b).is_ok())
                .map_or(end, |p| i + p);
            out.extend_from_slice(&buf[i..next]);
            i = next;
            if i >= end {
                break;
            }
            match self.needle_at(&buf[i..]) {
                Some(len) => {
                    out.extend(marker(len));
                    self.found = true;
                    i += len;
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        (out, i)
    }

    fn needle_at(&self, rest: &[u8]) -> Option<usize> {
        self.needles
            .iter()
            .find(|n| rest.len() >= n.len() && bool::from(rest[..n.len()].ct_eq(n.as_slice())))
            .map(|n| n.len())
    }
}

/// The marker for a secret of `len` bytes (only `*` when it is shorter
/// than [`MARKER`]).
fn marker(len: usize) -> impl Iterator<Item = u8> {
    let head: &[u8] = if len >= MARKER.len() { MARKER } else { b"" };
    head.iter()
        .copied()
        .chain(std::iter::repeat(b'*'))
        .take(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"re_live_7f3c9a_the_real_key";
    const HEADER: &[u8] = b"Bearer re_live_7f3c9a_the_real_key";

    fn scrubber() -> Scrubber {
        Scrubber::new([KEY, HEADER])
    }

    fn stream(s: &mut Scrubber, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_secret_is_replaced_by_a_marker_of_its_length() {
        let mut s = scrubber();
        let body = [&b"{\"authorization\":\""[..], HEADER, b"\"}"].concat();
        let out = stream(&mut s, &[&body]);
        assert_eq!(out.len(), body.len());
        assert!(!contains(&out, KEY));
        assert!(contains(&out, b"[REDACTED]****"));
        assert!(s.reflected());
    }

    #[test]
    fn a_secret_split_across_chunks_is_caught() {
        for cut in 1..HEADER.len() {
            let mut s = scrubber();
            let out = stream(&mut s, &[b"xx", &HEADER[..cut], &HEADER[cut..], b"yy"]);
            assert!(!contains(&out, KEY), "cut at {cut}");
            assert_eq!(out.len(), HEADER.len() + 4);
            assert!(s.reflected());
        }
        // One byte at a time.
        let mut s = scrubber();
        let chunks: Vec<&[u8]> = KEY.chunks(1).collect();
        let out = stream(&mut s, &chunks);
        assert_eq!(out, b"[REDACTED]*****************".to_vec());
    }

    #[test]
    fn clean_streams_pass_unchanged() {
        let mut s = scrubber();
        let out = stream(
            &mut s,
            &[b"hello ", b"re_live_7f3c9a_", b"not the key", b""],
        );
        assert_eq!(out, b"hello re_live_7f3c9a_not the key".to_vec());
        assert!(!s.reflected());
    }

    #[test]
    fn header_values_are_scrubbed_on_their_own() {
        let mut s = scrubber();
        assert_eq!(s.scrub(b"nothing"), None);
        let v = s.scrub(b"echo: re_live_7f3c9a_the_real_key!").unwrap();
        assert_eq!(v, b"echo: [REDACTED]*****************!".to_vec());
        assert!(s.reflected());
        assert_eq!(s.scrub(b"nothing"), None);
        assert!(s.reflected(), "stays reflected");
    }

    #[test]
    fn short_secrets_and_no_secrets() {
        let mut s = Scrubber::new([&b"k1"[..], b""]);
        assert_eq!(stream(&mut s, &[b"ak", b"1b"]), b"a**b".to_vec());
        let mut none = Scrubber::new(std::iter::empty());
        assert_eq!(stream(&mut none, &[b"abc"]), b"abc".to_vec());
        assert!(!format!("{s:?}").contains("k1"));
    }

    proptest! {
        #[test]
        fn no_chunking_lets_a_secret_through(
            before in proptest::collection::vec(any::<u8>(), 0..64),
            after in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let body = [&before[..], KEY, &after[..], HEADER].concat();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&body[last..p]);
                last = p;
            }
            chunks.push(&body[last..]);
            let mut s = scrubber();
            let out = stream(&mut s, &chunks);
            prop_assert_eq!(out.len(), body.len());
            prop_assert!(!contains(&out, KEY));
            prop_assert!(s.reflected());
        }

        #[test]
        fn without_a_secret_the_stream_is_unchanged(
            body in proptest::collection::vec(b'a'..b'f', 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(body.len());
            let mut s = Scrubber::new([&b"abcdefg"[..]]);
            let out = stream(&mut s, &[&body[..cut], &body[cut..]]);
            prop_assert_eq!(out, body);
        }
    }
}
