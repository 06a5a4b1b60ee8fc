//! One module per command, each `run(inputs, out)`.

pub mod mint_pool;
pub mod route;
pub mod validate;
