use candle_core::Device;
use lavic_train::full::FullModel;
use lavic_train::linear::Ctx;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (base, world) = (std::path::PathBuf::from(&a[1]), std::path::PathBuf::from(&a[2]));
    let pool: usize = a[3].parse().unwrap();
    let m = FullModel::load(&base, None, &Device::Cpu).unwrap().with_pool(pool).unwrap();
    let items = std::fs::read_to_string(world.join("items.jsonl")).unwrap();
    let mut out = Vec::new();
    let mut raw = Vec::new();
    let mut pix = Vec::new();
    for l in items.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let id = v["id"].as_str().unwrap();
        let views = lavic_train::stage0::item_views(&world, id, &m.anyres).unwrap();
        pix.extend(views.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let f = m.patch_features(&views, &mut Ctx::eval()).unwrap().squeeze(0).unwrap();
        out.extend(f.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let h = m.vision_hidden_states(&views, m.feature_layer_index()).unwrap();
        raw.extend(h.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let w = |p: &str, d: &[f32]| std::fs::write(p, d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    w("/work/exp/feats_proj.f32", &out);
    w("/work/exp/feats_raw.f32", &raw);
    w("/work/exp/views_all.f32", &pix);
}
