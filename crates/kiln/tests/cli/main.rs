//! CLI tests: the real `kiln` binary run in temporary projects, its output snapshotted.

mod check;
mod common;
mod database_url;
mod example;
mod formats;
mod image;
mod image_push;
mod init;
mod kubernetes;
mod lineage;
mod models;
mod monorepo;
mod notify;
mod registry;
mod reliability;
mod run;
mod runs;
mod servable;
mod serve;
mod store;
mod transfer;
mod up;
