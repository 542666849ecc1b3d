//! What kind of product a line is, for the guidance paragraph of nurture
//! and win-back emails: the templates hold the words per language, keyed by
//! this kind. In core because orders-consumer (nurture) and
//! shipments-consumer (win-back) both need it.

/// A product's kind for the guidance paragraph of nurture and win-back
/// emails (the templates hold the words per language): derived from the
/// line's category, `other` when nothing matches.
pub fn product_kind(category: Option<&str>) -> &'static str {
    let category = category.unwrap_or_default().to_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| category.contains(w));
    if any(&["kitchen", "cook", "appliance", "coffee"]) {
        "kitchen"
    } else if any(&[
        "electronic",
        "computer",
        "laptop",
        "tablet",
        "audio",
        "tv",
        "phone",
        "camera",
        "gaming",
    ]) {
        "electronics"
    } else if any(&["outdoor", "sport", "bike", "bicycle", "camping", "garden", "fitness"]) {
        "outdoor"
    } else if any(&["apparel", "fashion", "cloth", "shoe", "wear"]) {
        "apparel"
    } else if any(&[
        "furniture",
        "home",
        "sofa",
        "chair",
        "table",
        "desk",
        "bed",
        "lamp",
        "light",
        "decor",
    ]) {
        "home"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_kinds_come_from_the_category() {
        assert_eq!(product_kind(Some("Kitchen & Dining")), "kitchen");
        assert_eq!(product_kind(Some("home")), "home");
        assert_eq!(product_kind(Some("Outdoor/Camping")), "outdoor");
        assert_eq!(product_kind(Some("Tablets")), "electronics");
        assert_eq!(product_kind(None), "other");
    }
}
