//! Nothing wrong is ever served: a damaged value, a value copied under another id and a value of
//! another encoder's namespace all fail their checksum and are reported naming the item; a store
//! opened for one encoder never reads another encoder's namespace.

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::redis::Layout;
use lavic_catalog::{Error, RedisStore, StoreForm};

use crate::support::*;

#[test]
fn a_damaged_or_moved_value_is_refused_naming_the_item() {
    let server = RedisServer::start();
    let s = store(&server);
    s.write(vec![item("good", 0), item("flip", 0), item("moved", 0)]).unwrap();
    let mut con = server.connection();
    // One flipped bit in the features (past the 56-byte header and the title).
    let v: Vec<u8> = redis::cmd("GET").arg(item_key("flip")).query(&mut con).unwrap();
    let at = v.len() - 3;
    let _: () = redis::cmd("SETRANGE").arg(item_key("flip")).arg(at).arg(&[v[at] ^ 0x04][..]).query(&mut con).unwrap();
    // A valid value of another item, under this id.
    let other: Vec<u8> = redis::cmd("GET").arg(item_key("good")).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg(item_key("moved")).arg(other).query(&mut con).unwrap();
    for id in ["flip", "moved"] {
        let e = s.stored(&["good", id]).unwrap_err();
        match &e {
            Error::StoreCorrupt { key, detail, .. } => {
                assert_eq!(key, &item_key(id));
                assert!(detail.contains(id) && detail.contains("checksum"), "{detail}");
            }
            other => panic!("expected StoreCorrupt, got {other}"),
        }
        assert!(s.get(id).is_err());
    }
    assert_eq!(s.stored(&["good"]).unwrap()[0].as_deref(), Some(&item("good", 0)));
    assert!(s.stats().errors_corrupt >= 4);
    // An upsert replaces a damaged value.
    s.write(vec![item("flip", 1)]).unwrap();
    assert_eq!(s.stored(&["flip"]).unwrap()[0].as_deref(), Some(&item("flip", 1)));
}

#[test]
fn another_encoders_namespace_is_never_read() {
    let server = RedisServer::start();
    let a = store(&server);
    a.write(vec![item("x", 0), item("y", 0)]).unwrap();
    let other_fp = "ef".repeat(32);
    let b = RedisStore::open(&config(&server), Layout { fingerprint: other_fp.clone(), ..layout() }, None).unwrap();
    assert_eq!(b.len(), 0);
    assert!(b.stored(&["x", "y"]).unwrap().iter().all(Option::is_none));
    // Even a value copied into the other namespace's key is refused: the checksum covers the
    // fingerprint.
    let mut con = server.connection();
    let v: Vec<u8> = redis::cmd("GET").arg(item_key("x")).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg(format!("lavic:{{{other_fp}}}:item:x")).arg(v).query(&mut con).unwrap();
    assert!(matches!(b.stored(&["x"]), Err(Error::StoreCorrupt { .. })));
    // A namespace whose metadata names another layout is refused at open.
    let narrow = Layout { width: WIDTH / 2, vision_width: WIDTH / 2, ..layout() };
    let e = RedisStore::open(&config(&server), narrow, None).unwrap_err();
    assert!(matches!(e, Error::StoreRejected { .. }) && e.to_string().contains("stores cls x 16"), "{e}");
    let projected = Layout { form: StoreForm::Projected, ..layout() };
    assert!(RedisStore::open(&config(&server), projected, None).is_err());
}

#[test]
fn a_namespace_damaged_by_someone_else_refuses_writes_before_writing_anything() {
    let server = RedisServer::start();
    let s = store(&server);
    let mut con = server.connection();
    let index = format!("lavic:{{{FP}}}:index");
    let _: () = redis::cmd("SET").arg(&index).arg("not a hash").query(&mut con).unwrap();
    let e = s.write(vec![item("x", 0)]).unwrap_err();
    assert!(matches!(e, Error::StoreRejected { .. }) && e.to_string().contains("index key holds a string"), "{e}");
    let exists: u64 = redis::cmd("EXISTS").arg(item_key("x")).query(&mut con).unwrap();
    assert_eq!(exists, 0, "nothing of the refused batch was written");
    let _: () = redis::cmd("DEL").arg(&index).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg(format!("lavic:{{{FP}}}:epoch")).arg("x").query(&mut con).unwrap();
    assert!(s.delete(&["x"]).unwrap_err().to_string().contains("epoch key is not a number"));
}
