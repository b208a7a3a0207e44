use chorus::{Options, ProcessGroup, ReduceOp};
fn main() {
    let pg = ProcessGroup::from_env(Options::default()).expect("group");
    let n = pg.size();
    for &len in &[0usize, 1, 7, 4097, 1 << 20, 3 << 20] {
        let mut v: Vec<f32> = (0..len).map(|i| (pg.rank() * 1000 + i % 100) as f32).collect();
        pg.all_reduce(&mut v, ReduceOp::Sum).expect("all_reduce");
        for (i, x) in v.iter().enumerate() {
            let exp: f32 = (0..n).map(|r| (r * 1000 + i % 100) as f32).sum();
            assert_eq!(*x, exp, "len {len} i {i}");
        }
    }
    pg.barrier().unwrap();
    println!("rank {} ok transports {:?}", pg.rank(), pg.transports());
}
