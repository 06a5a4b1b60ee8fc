//! One module per command, each `run(inputs, out)`.

pub mod migrate;
pub mod mint_pool;
pub mod route;
pub mod validate;
