pub mod proto;
pub mod domain;
