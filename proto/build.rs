fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kds.proto");
    println!("cargo:rerun-if-changed=dp.proto");
    tonic_prost_build::configure().compile_protos(&["kds.proto", "dp.proto"], &["."])?;
    Ok(())
}
