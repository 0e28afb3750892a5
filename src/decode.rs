//! Response body decompression for metering, as chunks pass.
//!
//! The client always gets the provider's bytes; only the filter's copy is decoded, chunk by chunk,
//! into a small buffer that the caller drains after each chunk. `gzip`, `deflate` (zlib-wrapped or
//! raw, as servers differ) and `br` are decoded; the total decoded size is capped, so a
//! compression bomb costs at most the cap before the filter stops reading.

use std::io::Write;

/// Where decoded bytes land until the caller takes them.
#[derive(Default)]
pub struct Sink {
    buf: Vec<u8>,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Gzip(flate2::write::GzDecoder<Sink>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Deflate(flate2::write::DeflateDecoder<Sink>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    /// `deflate` before its first byte tells zlib from raw.
    DeflateUndecided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not valid in its declared encoding.
    Corrupt,
    /// Decoded output passed the cap.
    TooLarge,
}

pub struct Decoder {
    inner: Inner,
    /// The bytes decoded from the last chunk.
    out: Vec<u8>,
    decoded: usize,
    cap: usize,
}

impl Decoder {
    /// A decoder for a `content-encoding` value; `None` for identity or an unknown encoding
    /// (the caller tells them apart with [`is_identity`]).
    pub fn for_encoding(encoding: &str, cap: usize) -> Option<Decoder> {
        let inner = match encoding.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Inner::Gzip(flate2::write::GzDecoder::new(Sink::default())),
            "deflate" => Inner::DeflateUndecided,
            "br" => Inner::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Sink::default(),
                4096,
            ))),
            _ => return None,
        };
        Some(Decoder {
            inner,
            out: Vec::new(),
            decoded: 0,
            cap,
        })
    }

    /// Decode one chunk; returns the decoded bytes (valid until the next call).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<&[u8], DecodeError> {
        if chunk.is_empty() {
            return Ok(&[]);
        }
        if let Inner::DeflateUndecided = self.inner {
            // RFC 9110 says zlib; some servers send raw deflate. A zlib header is CM=8 with a
            // checksum that makes the first two bytes a multiple of 31.
            let zlib = chunk[0] & 0x0F == 8
                && chunk
                    .get(1)
                    .is_none_or(|&b| (u16::from(chunk[0]) * 256 + u16::from(b)) % 31 == 0);
            self.inner = if zlib {
                Inner::Zlib(flate2::write::ZlibDecoder::new(Sink::default()))
            } else {
                Inner::Deflate(flate2::write::DeflateDecoder::new(Sink::default()))
            };
        }
        fn write<W: Write>(d: &mut W, chunk: &[u8]) -> Result<(), DecodeError> {
            d.write_all(chunk)
                .and_then(|()| d.flush())
                .map_err(|_| DecodeError::Corrupt)
        }
        let sink = match &mut self.inner {
            Inner::Gzip(d) => write(d, chunk).map(|()| d.get_mut()),
            Inner::Zlib(d) => write(d, chunk).map(|()| d.get_mut()),
            Inner::Deflate(d) => write(d, chunk).map(|()| d.get_mut()),
            Inner::Brotli(d) => write(d.as_mut(), chunk).map(|()| d.get_mut()),
            Inner::DeflateUndecided => return Ok(&[]),
        }?;
        // Swap buffers so both allocations are reused from chunk to chunk.
        self.out.clear();
        std::mem::swap(&mut self.out, &mut sink.buf);
        self.decoded = self.decoded.saturating_add(self.out.len());
        if self.decoded > self.cap {
            return Err(DecodeError::TooLarge);
        }
        Ok(&self.out)
    }
}

/// True for an absent, empty or `identity` encoding.
pub fn is_identity(encoding: Option<&str>) -> bool {
    encoding.is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_in_chunks(
        enc: &str,
        body: &[u8],
        chunk: usize,
        cap: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = Decoder::for_encoding(enc, cap).unwrap();
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            out.extend_from_slice(d.feed(c)?);
        }
        Ok(out)
    }

    const TEXT: &[u8] =
        br#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":3},"model":"m"}"#;

    #[test]
    fn gzip_and_both_deflates_in_any_chunking() {
        let z = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(TEXT).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(TEXT).unwrap();
            e.finish().unwrap()
        };
        for chunk in [1, 2, 7, 4096] {
            assert_eq!(
                decode_in_chunks("gzip", &gzip(TEXT), chunk, 1 << 20).unwrap(),
                TEXT
            );
            assert_eq!(
                decode_in_chunks("deflate", &z, chunk, 1 << 20).unwrap(),
                TEXT
            );
            assert_eq!(
                decode_in_chunks("deflate", &raw, chunk, 1 << 20).unwrap(),
                TEXT
            );
        }
    }

    #[test]
    fn brotli_fixture_in_any_chunking() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openai");
        let br = std::fs::read(root.join("chat_completion.json.br")).unwrap();
        let plain = std::fs::read(root.join("chat_completion.json")).unwrap();
        for chunk in [1, 3, 100, 100_000] {
            assert_eq!(decode_in_chunks("br", &br, chunk, 1 << 20).unwrap(), plain);
        }
    }

    #[test]
    fn bombs_stop_at_the_cap_and_garbage_is_corrupt() {
        // Smaller under wasm32: Node's V8 was seen to crash at exit once a test had grown the
        // module's memory by tens of MiB (the logic is the same at any size).
        let zeros = vec![
            0u8;
            if cfg!(target_arch = "wasm32") {
                4 << 20
            } else {
                10 << 20
            }
        ];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            decode_in_chunks("gzip", &bomb, 4096, 1 << 20),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            decode_in_chunks("gzip", b"not gzip at all", 4, 1 << 20),
            Err(DecodeError::Corrupt)
        );
    }

    #[test]
    fn encodings() {
        assert!(is_identity(None));
        assert!(is_identity(Some(" Identity ")));
        assert!(!is_identity(Some("gzip")));
        assert!(Decoder::for_encoding("zstd", 1).is_none());
        assert!(Decoder::for_encoding("GZIP", 1).is_some());
    }
}
