//! One module per command, each `run(inputs, out)`.

pub mod archive;
pub mod change;
pub mod degrade;
pub mod demo;
pub mod dev_token;
pub mod down;
pub mod expand;
pub mod failover;
pub mod fund;
pub mod migrate;
pub mod mint_pool;
pub mod reconcile;
pub mod region;
pub mod render;
pub mod route;
pub mod state_dir;
pub mod status;
pub mod switch;
pub mod transfers;
pub mod up;
pub mod validate;
