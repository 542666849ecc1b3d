//! Embeds `templates/` into the binary, so a deployment ships one file.
fn main() {
    minijinja_embed::embed_templates!("templates");
}
