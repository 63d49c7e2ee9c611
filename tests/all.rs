//! The integration tests, as one binary (it links once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod ask;
mod cli;
mod editor;
mod index;
mod instance;
mod neovim;
mod review;
mod run;
#[cfg(unix)]
mod serve;
mod tui;
