//! `ember-runtime`: the parts of Ember that every process shares and the head node itself.
//!
//! It knows nothing of CUDA or Python: the resource model ([`resources`]), identifiers
//! ([`ids`]), placement ([`placement`]), collective groups and their schedules ([`collective`]), the wire protocol ([`proto`]), cluster security
//! ([`security`]) and the head ([`head`]).

pub mod collective;
pub mod head;
pub mod host;
pub mod ids;
pub mod placement;
pub mod proto;
pub mod resources;
pub mod security;
