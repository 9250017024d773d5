//! `unmask devices`: the devices unmask can run on (after loading GPU backend libraries) and the
//! CPU code in use (`unmask_kernels::cpu_code`), as lines or, with `--json`, one JSON object.

#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    use unmask_kernels::device;
    let cuda = device::load_family("cuda");
    let cpu = unmask_kernels::cpu_code::cpu_code();
    let devices = device::devices();
    if args.json {
        let list: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let (free, total) = d.memory();
                serde_json::json!({
                    "name": d.name(),
                    "kind": format!("{:?}", d.kind()),
                    "description": d.description(),
                    "registry": d.registry(),
                    "memory_free_bytes": free,
                    "memory_total_bytes": total,
                })
            })
            .collect();
        let report = serde_json::json!({
            "cuda_backend": cuda,
            "cpu_code": {
                "ggml_built": cpu.ggml_built,
                "machine": cpu.machine,
                "unused": cpu.unused,
                "q8_0_products": cpu.q8_0_products,
            },
            "devices": list,
        });
        println!("{report}");
        return Ok(());
    }
    println!("CUDA backend: {cuda}");
    for d in &devices {
        let (free, total) = d.memory();
        println!(
            "{:8} {:?} {} [{}], {:.1}/{:.1} GiB free",
            d.name(),
            d.kind(),
            d.description(),
            d.registry(),
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "CPU code: ggml built for {}; q8_0 products: {}",
        cpu.ggml_built.join(" "),
        cpu.q8_0_products
    );
    println!("CPU offers: {}", cpu.machine.join(" "));
    if !cpu.unused.is_empty() {
        println!(
            "CPU offers but this build does not use: {}",
            cpu.unused.join(" ")
        );
    }
    Ok(())
}
