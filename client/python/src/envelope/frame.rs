//! The framing itself: reading it ([`parse`]), writing it ([`write`]) and rewriting a frame
//! with every buffer inline ([`inline`]).
//!
//! ```text
//! "EMB3" | buffer count: u32 | pickle length: u64
//! | each entry: kind: u8, length: u64, and for kinds 1 and 2 a name length: u16 and the name
//! | the pickle
//! | each kind-0 buffer: zeros up to a multiple of 64 bytes from the frame's start, its bytes
//! ```
//!
//! All integers little-endian. Kind 0 is a buffer inline, kind 1 one in a file in
//! `/dev/shm` named by the frame. Inline buffers start 64-byte aligned from the frame's start,
//! as numpy wants its data. Kind 2 is no buffer but an actor whose handle the pickle holds
//! (its id as the name, length 0): whoever receives the frame holds that actor until it is
//! done with the frame, so the handle still reaches the actor when it is unpickled, however
//! late (the buffer count counts these entries too).

use std::ops::Range;

use super::memory::memory_for;

/// The framing's first bytes.
pub(crate) const MAGIC: &[u8; 4] = b"EMB3";

/// Where each inline buffer starts: a multiple of this from the frame's start.
const ALIGN: usize = 64;

/// A buffer inline.
const INLINE: u8 = 0;
/// A buffer in a shared-memory file.
const SHARED: u8 = 1;
/// An actor held by the pickle's handles: no buffer.
const ACTOR: u8 = 2;

/// One buffer of a frame to write.
pub(crate) enum Part<'a> {
    /// Its bytes, laid out in the frame.
    Inline(&'a [u8]),
    /// A shared-memory file of `len` bytes, by name.
    Shared { len: u64, name: &'a str },
}

/// One buffer of a parsed frame.
pub(crate) struct Buffer {
    /// [`INLINE`] or [`SHARED`].
    kind: u8,
    /// Its length in bytes.
    pub(crate) len: u64,
    /// Where its bytes (inline) or its file's name (shared) are in the frame.
    pub(crate) at: Range<usize>,
}

impl Buffer {
    /// Whether its bytes are in a shared-memory file.
    pub(crate) fn is_shared(&self) -> bool {
        self.kind == SHARED
    }
}

/// A parsed frame: its buffers, the ids of the actors its pickle holds, and where its
/// pickle is.
pub(crate) struct Parsed {
    pub(crate) buffers: Vec<Buffer>,
    pub(crate) actors: Vec<Range<usize>>,
    pub(crate) pickle: Range<usize>,
}

impl Parsed {
    /// The ids of the actors the pickle holds, as written (see [`ACTOR`]).
    pub(crate) fn actor_ids<'f>(&self, frame: &'f [u8]) -> Vec<&'f str> {
        self.actors
            .iter()
            .filter_map(|r| std::str::from_utf8(&frame[r.clone()]).ok())
            .collect()
    }
}

/// Whether `bytes` is framed (else it is a plain pickle).
pub(crate) fn is_framed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The frame's parts, or `None` for a plain pickle or a frame that does not parse (the
/// Python side then reports it).
pub(crate) fn parse(frame: &[u8]) -> Option<Parsed> {
    if !is_framed(frame) {
        return None;
    }
    let mut at = MAGIC.len();
    let take = |at: &mut usize, n: usize| -> Option<Range<usize>> {
        let r = *at..at.checked_add(n)?;
        frame.get(r.clone())?;
        *at = r.end;
        Some(r)
    };
    let u64_at =
        |r: Range<usize>| -> Option<u64> { Some(u64::from_le_bytes(frame[r].try_into().ok()?)) };
    let count = u32::from_le_bytes(frame[take(&mut at, 4)?].try_into().ok()?);
    let pickle_len = usize::try_from(u64_at(take(&mut at, 8)?)?).ok()?;
    let mut buffers = Vec::new();
    let mut actors = Vec::new();
    for _ in 0..count {
        let kind = frame[take(&mut at, 1)?.start];
        let len = u64_at(take(&mut at, 8)?)?;
        let name = match kind {
            INLINE => 0..0,
            SHARED | ACTOR => {
                let n = u16::from_le_bytes(frame[take(&mut at, 2)?].try_into().ok()?);
                take(&mut at, usize::from(n))?
            }
            _ => return None,
        };
        if kind == ACTOR {
            actors.push(name);
            continue;
        }
        buffers.push(Buffer {
            kind,
            len,
            at: name,
        });
    }
    let pickle = take(&mut at, pickle_len)?;
    for b in buffers.iter_mut().filter(|b| b.kind == INLINE) {
        at = at.next_multiple_of(ALIGN);
        b.at = take(&mut at, usize::try_from(b.len).ok()?)?;
    }
    Some(Parsed {
        buffers,
        actors,
        pickle,
    })
}

/// The frame of `pickle`, its out-of-band `parts`, in order, each inline buffer copied
/// once into memory from [`memory_for`], and the ids of the `actors` its handles hold.
pub(crate) fn write(pickle: &[u8], parts: &[Part<'_>], actors: &[&str]) -> Vec<u8> {
    let mut head = 4 + 4 + 8 + pickle.len();
    for a in actors {
        head += 1 + 8 + 2 + a.len();
    }
    for p in parts {
        head += 1
            + 8
            + match p {
                Part::Inline(_) => 0,
                Part::Shared { name, .. } => 2 + name.len(),
            };
    }
    let total = parts.iter().fold(head, |at, p| match p {
        Part::Inline(b) => at.next_multiple_of(ALIGN) + b.len(),
        Part::Shared { .. } => at,
    });
    let mut out = memory_for(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&((parts.len() + actors.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(pickle.len() as u64).to_le_bytes());
    for a in actors {
        out.push(ACTOR);
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(a.len() as u16).to_le_bytes());
        out.extend_from_slice(a.as_bytes());
    }
    for p in parts {
        match p {
            Part::Inline(b) => {
                out.push(INLINE);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            }
            Part::Shared { len, name } => {
                out.push(SHARED);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
    }
    out.extend_from_slice(pickle);
    for p in parts {
        if let Part::Inline(b) = p {
            out.resize(out.len().next_multiple_of(ALIGN), 0);
            out.extend_from_slice(b);
        }
    }
    debug_assert_eq!(out.len(), total);
    out
}

/// The frame with every shared buffer's bytes inline, read from `files` (the frame's shared
/// files, in order): what another process, maybe on another machine, can read.
pub(crate) fn inline(
    frame: &[u8],
    parsed: &Parsed,
    files: &[std::path::PathBuf],
) -> Result<Vec<u8>, String> {
    let mut read = Vec::new();
    let mut files = files.iter();
    for b in parsed.buffers.iter().filter(|b| b.is_shared()) {
        let path = files
            .next()
            .ok_or_else(|| "a result names a shared buffer it does not hold".to_string())?;
        let bytes = std::fs::read(path)
            .map_err(|e| format!("a result's shared buffer {} is gone: {e}", path.display()))?;
        if bytes.len() as u64 != b.len {
            return Err(format!(
                "a result's shared buffer {} holds {} bytes, not {}",
                path.display(),
                bytes.len(),
                b.len
            ));
        }
        read.push(bytes);
    }
    let mut read = read.iter();
    let parts: Vec<Part<'_>> = parsed
        .buffers
        .iter()
        .map(|b| match b.is_shared() {
            false => Part::Inline(&frame[b.at.clone()]),
            // Counted above: one read file per shared buffer.
            true => Part::Inline(read.next().map(Vec::as_slice).unwrap_or_default()),
        })
        .collect();
    Ok(write(
        &frame[parsed.pickle.clone()],
        &parts,
        &parsed.actor_ids(frame),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_its_buffers_aligned_and_its_pickle() {
        let a = vec![1u8; 100];
        let b = vec![2u8; 7];
        let frame = write(
            b"pickle",
            &[
                Part::Inline(&a),
                Part::Shared {
                    len: 4096,
                    name: "ember-buf-x",
                },
                Part::Inline(&b),
            ],
            &["actor-7"],
        );
        let parsed = parse(&frame).unwrap();
        assert_eq!(parsed.actor_ids(&frame), ["actor-7"]);
        assert_eq!(&frame[parsed.pickle.clone()], b"pickle");
        assert_eq!(parsed.buffers.len(), 3);
        assert_eq!(&frame[parsed.buffers[0].at.clone()], &a[..]);
        assert_eq!(parsed.buffers[0].at.start % ALIGN, 0);
        assert!(parsed.buffers[1].is_shared());
        assert_eq!(parsed.buffers[1].len, 4096);
        assert_eq!(&frame[parsed.buffers[1].at.clone()], b"ember-buf-x");
        assert_eq!(&frame[parsed.buffers[2].at.clone()], &b[..]);
        assert_eq!(parsed.buffers[2].at.start % ALIGN, 0);
        assert_eq!(parsed.buffers[2].at.end, frame.len());
    }

    #[test]
    fn a_truncated_or_foreign_frame_does_not_parse() {
        let frame = write(b"pickle", &[Part::Inline(&[9u8; 300])], &["a"]);
        for n in 0..frame.len() {
            assert!(parse(&frame[..n]).is_none(), "{n}");
        }
        assert!(parse(b"\x80\x05plain pickle").is_none());
        let mut bad_kind = frame.clone();
        bad_kind[16] = 7;
        assert!(parse(&bad_kind).is_none());
    }

    #[test]
    fn inlining_reads_the_shared_files_into_the_frame() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("buf");
        std::fs::write(&file, [5u8; 1000]).unwrap();
        let frame = write(
            b"p",
            &[Part::Shared {
                len: 1000,
                name: "buf",
            }],
            &["actor-1", "actor-2"],
        );
        let parsed = parse(&frame).unwrap();
        let inlined = inline(&frame, &parsed, std::slice::from_ref(&file)).unwrap();
        let back = parse(&inlined).unwrap();
        assert_eq!(back.actor_ids(&inlined), ["actor-1", "actor-2"]);
        assert!(!back.buffers[0].is_shared());
        assert_eq!(&inlined[back.buffers[0].at.clone()], &[5u8; 1000][..]);
        std::fs::write(&file, [5u8; 10]).unwrap();
        let e = inline(&frame, &parsed, &[file]).unwrap_err();
        assert!(e.contains("holds 10 bytes, not 1000"), "{e}");
    }
}
