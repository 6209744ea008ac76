# The PyTorch side of bench/cpu-stage3.ts: the same MOHAWK stage-3 step (teacher forward without
# gradients, student forward + backward on KL(teacher || student), AdamW) written as a PyTorch user
# would, on the CPU, to compare against. Not part of mohawk (which has no Python); run by the bench.
#
#   python3 cpu_stage3.py '{"style": "llama", "d": 64, ...}'   -> one JSON line: {"ms": [...], ...}
#
# The student mixer is the discrete Mamba-2 (Phi-Mamba) mixer with the chunked SSD scan in plain
# PyTorch (the algorithm of mamba_ssm's ssd_minimal); attention is causal softmax attention.

import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def norm(c):
    return RMSNorm(c["d"], 1e-5) if c["style"] == "llama" else nn.LayerNorm(c["d"], eps=1e-5)


def rope(x, rot, theta=10000.0):
    # x (b, h, t, hd): rotate the first `rot` dims, half-split layout (as HF Llama/Phi)
    t = x.shape[2]
    inv = 1.0 / theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = torch.cat([-x2, x1], -1)
    return torch.cat([xr * cos + rotated * sin, xp], -1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, hd = c["d"], c["heads"], c["kv_heads"], c["d"] // c["heads"]
        bias = c["style"] == "phi"
        self.h, self.kv, self.hd, self.rot = h, kv, hd, int(hd * c["rotary"])
        self.q = nn.Linear(d, h * hd, bias=bias)
        self.k = nn.Linear(d, kv * hd, bias=bias)
        self.v = nn.Linear(d, kv * hd, bias=bias)
        self.o = nn.Linear(h * hd, d, bias=bias)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, self.rot), rope(k, self.rot)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        p = s.masked_fill(mask, float("-inf")).softmax(-1)
        return self.o((p @ v).transpose(1, 2).reshape(b, t, -1))


def segsum(x):
    # x (..., T) -> (..., T, T): sum of x[j+1..i] below the diagonal, -inf above
    t = x.shape[-1]
    x = x[..., None].expand(*x.shape, t)
    x = x.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(-1), 0)
    s = x.cumsum(-2)
    return s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(0), float("-inf"))


def ssd(x, logA, B, C, q):
    # x (b, l, h, p), logA (b, l, h), B/C (b, l, h, n); chunks of q: y (b, l, h, p)
    b, l, h, p = x.shape
    x, B, C = (u.reshape(b, l // q, q, *u.shape[2:]) for u in (x, B, C))
    A = logA.reshape(b, l // q, q, h).permute(0, 3, 1, 2)  # (b, h, c, q)
    A_cum = A.cumsum(-1)
    L = torch.exp(segsum(A))
    # two-operand contractions (torch 1.13 contracts a many-operand einsum left to right)
    cb = torch.einsum("bclhn,bcshn->bchls", C, B) * L.permute(0, 2, 1, 3, 4)
    y_diag = torch.einsum("bchls,bcshp->bclhp", cb, x)
    decay = torch.exp(A_cum[:, :, :, -1:] - A_cum).permute(0, 2, 3, 1)  # (b, c, l, h)
    states = torch.einsum("bclhn,bclhp->bchpn", B * decay[..., None], x)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
    chunk_decay = torch.exp(segsum(F.pad(A_cum[:, :, :, -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]
    y_off = torch.einsum("bclhn,bchpn->bclhp", C, states) * torch.exp(A_cum).permute(0, 2, 3, 1)[..., None]
    return (y_diag + y_off).reshape(b, l, h, p)


class Mixer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, n = c["d"], c["heads"], c["d_state"]
        bias = c["style"] == "phi"
        self.h, self.n, self.p, self.q = h, n, d // h, c["chunk"]
        self.conv_dim = d + 2 * h * n
        self.in_proj = nn.Linear(d, 2 * d + 2 * h * n + h, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, 4, groups=self.conv_dim, padding=3)
        self.z_bias = nn.Parameter(torch.zeros(d))
        self.D = nn.Parameter(torch.ones(h))
        self.out_proj = nn.Linear(d, d, bias=bias)

    def forward(self, u):
        b, t, d = u.shape
        xBC, z, a = self.in_proj(u).split([self.conv_dim, d, self.h], -1)
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :t].transpose(1, 2)
        x, B, C = xBC.split([d, self.h * self.n, self.h * self.n], -1)
        x = x.reshape(b, t, self.h, self.p)
        y = ssd(
            x,
            F.logsigmoid(-a),
            B.reshape(b, t, self.h, self.n),
            C.reshape(b, t, self.h, self.n),
            self.q,
        )
        y = y + x * self.D[:, None]
        return self.out_proj(y.reshape(b, t, d) * F.silu(z + self.z_bias))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["d"], c["ffn"]
        self.gated = c["style"] == "llama"
        if self.gated:
            self.gate, self.up, self.down = (nn.Linear(d, f, False), nn.Linear(d, f, False), nn.Linear(f, d, False))
        else:
            self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        if self.gated:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, student):
        super().__init__()
        self.phi = c["style"] == "phi"
        self.n1 = norm(c)
        self.mix = Mixer(c) if student else Attention(c)
        self.mlp = MLP(c)
        if not self.phi:
            self.n2 = norm(c)

    def forward(self, x):
        n = self.n1(x)
        if self.phi:  # parallel block
            return x + self.mix(n) + self.mlp(n)
        h = x + self.mix(n)
        return h + self.mlp(self.n2(h))


class LM(nn.Module):
    def __init__(self, c, student):
        super().__init__()
        self.emb = nn.Embedding(c["vocab"], c["d"])
        self.blocks = nn.ModuleList([Block(c, student) for _ in range(c["layers"])])
        self.norm = norm(c)
        self.tied = c["tied"]
        if not self.tied:
            self.head = nn.Linear(c["d"], c["vocab"], bias=c["style"] == "phi")

    def forward(self, ids):
        x = self.emb(ids)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x @ self.emb.weight.t() if self.tied else self.head(x)


def main():
    c = json.loads(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(c["threads"])
    teacher = LM(c, student=False).requires_grad_(False)
    student = LM(c, student=True)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def step():
        ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"]))
        with torch.no_grad():
            t_logp = teacher(ids).float().log_softmax(-1)
        s_logp = student(ids).float().log_softmax(-1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        kl.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return kl.item()

    step()  # warm-up
    times, cpu = [], []
    for _ in range(c["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    out = {"ms": times, "cpuMs": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
