//! `ember-core`: the vocabulary every Ember process shares.
//!
//! Identifiers ([`ids`]), the resource model ([`resources`]), the versioned wire protocol
//! ([`proto`]), cluster security ([`security`]), collective schedules ([`collective`]) and
//! machine identity ([`host`]). It knows nothing of the head, of CUDA or of Python: workers,
//! clients and the Python wheel link it without the head's dependencies.

pub mod backoff;
pub mod collective;
pub mod host;
pub mod ids;
pub mod proto;
pub mod resources;
pub mod security;
