//! Commands besides `serve`: `preview`, `simulate`, `backup`, `restore`.

pub mod backup;
pub mod tools;
