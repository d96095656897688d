fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kds.proto");
    tonic_prost_build::configure().compile_protos(&["kds.proto"], &["."])?;
    Ok(())
}
