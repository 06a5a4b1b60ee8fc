//! One module per command, each `run(inputs, out)`.

pub mod dev_token;
pub mod migrate;
pub mod mint_pool;
pub mod route;
pub mod validate;
