//! A value's bytes in the two forms a call's destination may need: its large buffers as files
//! in `/dev/shm` for an executor on this machine (which maps them: no copy), or inline for
//! one elsewhere. A value keeps the form it was made or received in and makes the other on
//! first need, once, for every later call it is an argument of: a put value, a result passed
//! on, a call's own pickled arguments.

use std::sync::OnceLock;

use super::frame::{self, Part};
use super::shared::{self, SharedFiles};
use super::Envelope;

/// Buffers at least this large go into shared memory for a destination on this machine
/// (`_serialize.SHM_MIN`).
pub(crate) const SHM_MIN: u64 = 1 << 20;

/// A value's bytes as given (a plain pickle, or a frame whose buffers are inline or in
/// shared-memory files), and the other form once asked for. Owns every shared-memory file
/// either form names: they are removed when it is dropped.
#[derive(Debug)]
pub(crate) struct HostForms {
    given: Envelope,
    /// The files `given` names.
    _given_files: SharedFiles,
    /// `given` with every shared buffer inline: made when `given` names a shared buffer and
    /// a destination elsewhere needs it.
    inline: OnceLock<Result<Envelope, String>>,
    /// `given` with its large inline buffers in shared-memory files written for it, and
    /// those files: made when a destination on this machine needs it; `None` when they could
    /// not be written (`/dev/shm` full), so that `given` travels as it is.
    shared: OnceLock<Option<(Envelope, SharedFiles)>>,
}

impl HostForms {
    /// The forms of `given`, owning the shared-memory files it names.
    pub(crate) fn new(given: Envelope) -> Self {
        let files = super::own_files(&given);
        HostForms {
            given,
            _given_files: files,
            inline: OnceLock::new(),
            shared: OnceLock::new(),
        }
    }

    /// The bytes as given: what `get` unpickles (on this machine, whatever their form).
    pub(crate) fn given(&self) -> &[u8] {
        &self.given
    }

    /// The bytes for an executor on this machine (`same_host`: buffers of at least
    /// [`SHM_MIN`] bytes in shared-memory files, written at most once) or elsewhere (every
    /// buffer inline). An error when a shared buffer cannot be read back to be inlined.
    pub(crate) fn for_host(&self, same_host: bool) -> Result<&[u8], String> {
        let Some(parsed) = frame::parse(&self.given) else {
            return Ok(&self.given);
        };
        if same_host {
            let large_inline = parsed
                .buffers
                .iter()
                .any(|b| !b.is_shared() && b.len >= SHM_MIN);
            if !large_inline {
                return Ok(&self.given);
            }
            let shared = self.shared.get_or_init(|| share(&self.given, &parsed));
            return Ok(match shared {
                Some((bytes, _)) => bytes,
                None => &self.given,
            });
        }
        if !parsed.buffers.iter().any(|b| b.is_shared()) {
            return Ok(&self.given);
        }
        let inline = self.inline.get_or_init(|| {
            let files = shared::files_of(&self.given, &parsed)?;
            frame::inline(&self.given, &parsed, &files).map(Envelope::from)
        });
        match inline {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(e.clone()),
        }
    }
}

/// `frame` with each inline buffer of at least [`SHM_MIN`] bytes written to a new
/// shared-memory file, and those files (owned); `None` when one cannot be written.
fn share(frame: &[u8], parsed: &frame::Parsed) -> Option<(Envelope, SharedFiles)> {
    let mut written = Vec::new();
    let mut names = Vec::new();
    for b in &parsed.buffers {
        if !b.is_shared() && b.len >= SHM_MIN {
            match shared::write_file(&frame[b.at.clone()]) {
                Ok((path, name)) => {
                    written.push(path);
                    names.push(name);
                }
                Err(e) => {
                    tracing::debug!(
                        "a buffer travels inline: cannot write it to shared memory: {e}"
                    );
                    // Removes what was written so far.
                    drop(SharedFiles::own(written));
                    return None;
                }
            }
        }
    }
    let files = SharedFiles::own(written);
    let mut names = names.iter();
    let parts: Vec<Part<'_>> = parsed
        .buffers
        .iter()
        .map(|b| {
            if !b.is_shared() && b.len >= SHM_MIN {
                // One written above for each such buffer, in order.
                let name = names.next().map(String::as_str).unwrap_or_default();
                Part::Shared { len: b.len, name }
            } else if b.is_shared() {
                let name = std::str::from_utf8(&frame[b.at.clone()]).unwrap_or_default();
                Part::Shared { len: b.len, name }
            } else {
                Part::Inline(&frame[b.at.clone()])
            }
        })
        .collect();
    let bytes = frame::write(
        &frame[parsed.pickle.clone()],
        &parts,
        &parsed.actor_ids(frame),
    );
    Some((bytes.into(), files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(buffers: &[&[u8]]) -> Envelope {
        let parts: Vec<Part<'_>> = buffers.iter().map(|b| Part::Inline(b)).collect();
        frame::write(b"pickle", &parts, &["actor-1"]).into()
    }

    #[test]
    fn a_large_buffer_goes_to_one_shared_file_for_this_machine_and_stays_inline_elsewhere() {
        let big = vec![3u8; SHM_MIN as usize];
        let small = vec![4u8; 1000];
        let forms = HostForms::new(framed(&[&big, &small]));
        assert_eq!(
            forms.for_host(false).unwrap(),
            forms.given(),
            "inline as given"
        );

        let here = forms.for_host(true).unwrap().to_vec();
        let parsed = frame::parse(&here).unwrap();
        assert_eq!(parsed.actor_ids(&here), ["actor-1"]);
        assert!(
            parsed.buffers[0].is_shared(),
            "the large buffer is in a file"
        );
        assert!(!parsed.buffers[1].is_shared(), "the small one inline");
        let path = shared::files_of(&here, &parsed).unwrap().remove(0);
        assert_eq!(std::fs::read(&path).unwrap(), big);
        // Asked again (the next call it is an argument of): the same file, not another.
        assert_eq!(forms.for_host(true).unwrap(), &here[..]);

        drop(forms);
        assert!(!path.exists(), "its file goes with the value");
    }

    #[test]
    fn a_value_received_through_shared_memory_is_inlined_for_elsewhere() {
        let big = vec![9u8; SHM_MIN as usize + 5];
        let (path, name) = shared::write_file(&big).unwrap();
        let given = frame::write(
            b"p",
            &[Part::Shared {
                len: big.len() as u64,
                name: &name,
            }],
            &[],
        );
        let forms = HostForms::new(given.clone().into());
        assert_eq!(forms.for_host(true).unwrap(), &given[..], "as received");
        let elsewhere = forms.for_host(false).unwrap();
        let parsed = frame::parse(elsewhere).unwrap();
        assert!(!parsed.buffers[0].is_shared());
        assert_eq!(&elsewhere[parsed.buffers[0].at.clone()], &big[..]);
        drop(forms);
        assert!(!path.exists(), "the received file is owned and removed");
    }

    #[test]
    fn a_shared_buffer_gone_before_inlining_is_an_error_saying_so() {
        let (path, name) = shared::write_file(&[1u8; 64]).unwrap();
        let given = frame::write(
            b"p",
            &[Part::Shared {
                len: 64,
                name: &name,
            }],
            &[],
        );
        let forms = HostForms::new(given.into());
        std::fs::remove_file(&path).unwrap();
        let e = forms.for_host(false).unwrap_err();
        assert!(e.contains("is gone"), "{e}");
    }
}
