//! `--device cpu | cuda[:N]` to a candle device: the one place that knows
//! whether this binary was built with CUDA.

use candle_core::Device;

use super::CliError;
use crate::cli::DeviceKind;

/// Whether this binary can run on `kind` at all (not whether such a GPU is
/// present: [`open`] finds that out).
pub fn supported(kind: DeviceKind) -> Result<(), CliError> {
    if matches!(kind, DeviceKind::Cuda(_)) && !cfg!(feature = "cuda") {
        return Err(CliError::failed(format!(
            "--device {kind}: this zkinfer was built without CUDA support; use --device cpu, or \
             build it with scripts/build_cuda.sh (cargo build --release --features cuda, see docs/gpu.md)"
        )));
    }
    Ok(())
}

/// Opens `kind`, or says why it cannot be used and what to do instead.
pub fn open(kind: DeviceKind) -> Result<Device, CliError> {
    supported(kind)?;
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
            // candle appends a backtrace when RUST_BACKTRACE is set: keep the message.
            let message = e.to_string();
            let message = message.lines().next().unwrap_or_default();
            CliError::failed(format!(
                "cannot open CUDA device {ordinal}: {message} (check that `nvidia-smi` lists a \
                 GPU with that number and that the NVIDIA driver is loaded, or use --device cpu)"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_device;

    #[test]
    fn devices_parse_and_print_back() {
        assert_eq!(parse_device("cpu"), Ok(DeviceKind::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceKind::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceKind::Cuda(3)));
        assert_eq!(DeviceKind::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cpu:0", "CUDA"] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cpu_always_opens() {
        assert!(open(DeviceKind::Cpu).unwrap().is_cpu());
    }
}
