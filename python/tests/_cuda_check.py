import torch, torch.distributed as dist, chorus
dist.init_process_group("chorus", store=dist.HashStore(), rank=0, world_size=1)
t = torch.ones(4)
dist.all_reduce(t); print("cpu 1-rank ok", t.tolist())
if torch.cuda.is_available():
    try:
        dist.all_reduce(torch.ones(4, device="cuda")); print("cuda: no error?!")
    except Exception as e:
        print("cuda:", type(e).__name__, e)
dist.destroy_process_group()
