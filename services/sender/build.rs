//! Embeds `templates/` into the binary, so a deployment ships one file:
//! writes `templates.rs` with a table of (name, source) pairs that
//! `render::Renderer` loads, reporting a broken template as an error.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, root, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push((relative.to_string_lossy().replace('\\', "/"), path.clone()));
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?).join("templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut templates = Vec::new();
    collect(&root, &root, &mut templates)?;
    templates.sort();
    let mut code = String::from(
        "/// Every template under `templates/`: (name, source).\npub const TEMPLATES: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &templates {
        println!("cargo:rerun-if-changed={}", path.display());
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?).join("templates.rs");
    std::fs::write(out, code)
}
