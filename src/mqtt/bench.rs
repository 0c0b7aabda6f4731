//! `quiclab mqtt bench` (placeholder).
use clap::Args;

use super::MqttError;

/// `quiclab mqtt bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_a: BenchArgs) -> Result<i32, MqttError> {
    Err(MqttError::Unsupported("bench".into()))
}
