// chorus_torch: the native torch.distributed backend "chorus", a c10d::Backend over the chorus C ABI.
//
// Built for the torch it meets (chorus/_native.py compiles it with torch.utils.cpp_extension at first
// import and caches it per torch build). No Python runs on the per-call path, and no CUDA toolkit
// header is needed: CUDA streams and events are reached through c10's device-guard interface.
//
// The chorus library (libchorus_ffi.so) is not linked: init() dlopens the same file the Python
// package loaded (one instance of the library per process) and resolves the C ABI by name.
//
// Call paths:
// - blocking: a plain call (torch's asyncOp == false) on CPU tensors passes a NULL work handle, so the
//   collective runs on this thread; the returned Work is already complete.
// - asynchronous (async_op=True, send/recv, and every call on a torch without asyncOp): the C ABI
//   queues the operation and returns a handle; Work::wait helps run it (chorus_work_wait).
// - CUDA tensors: the operation is enqueued on the tensor's current stream (blocking form, no host
//   synchronization); Work::wait makes the caller's current stream wait when it is a different one.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/csrc/utils/pybind.h>
#include <torch/extension.h>

#include "chorus.h"

// Features of the torch being built against, detected from its headers by chorus/_native.py:
// CHORUS_HAS_ASYNC_OP: the collective options carry asyncOp (plain calls can run on the caller's thread);
// CHORUS_HAS_GATHER_SINGLE: c10d::Backend has gather_into_tensor (a single flat gather output).
#ifndef CHORUS_HAS_ASYNC_OP
#error "build through chorus/_native.py, which sets the CHORUS_HAS_* feature macros"
#endif
#if CHORUS_HAS_ASYNC_OP
#define CHORUS_ASYNC_OP(opts) ((opts).asyncOp)
#else
#define CHORUS_ASYNC_OP(opts) true
#endif

namespace py = pybind11;

namespace chorus_torch {

// ------------------------------------------------------------------------------------------ C ABI

// Every C ABI function the adapter calls, resolved from the library at init().
#define CHORUS_FUNCTIONS(X)                                                                                   \
  X(chorus_abi_version) X(chorus_last_error) X(chorus_buf_write) X(chorus_group_create) X(chorus_group_join) \
  X(chorus_group_rank) X(chorus_group_size) X(chorus_group_active_ranks) X(chorus_group_epoch) X(chorus_group_replica_address)               \
  X(chorus_group_ops_completed) X(chorus_group_mark) X(chorus_group_resume_point) X(chorus_group_device_status) X(chorus_group_deactivate_ranks)             \
  X(chorus_group_activate_ranks) X(chorus_group_destroy) X(chorus_all_reduce) X(chorus_broadcast)           \
  X(chorus_reduce) X(chorus_all_gather) X(chorus_reduce_scatter) X(chorus_all_to_all) X(chorus_all_to_all_v) \
  X(chorus_gather) X(chorus_scatter) X(chorus_barrier) X(chorus_send) X(chorus_recv) X(chorus_work_wait)    \
  X(chorus_work_is_completed) X(chorus_work_failed_ranks) X(chorus_work_contributors) X(chorus_work_epoch)  \
  X(chorus_work_free) X(chorus_last_op_failed_ranks) X(chorus_last_op_contributors) X(chorus_last_op_epoch)

struct Api {
#define CHORUS_API_FIELD(name) decltype(&::name) name = nullptr;
  CHORUS_FUNCTIONS(CHORUS_API_FIELD)
#undef CHORUS_API_FIELD
};

Api api;
std::string api_path;

void load_api(const std::string& path) {
  if (api.chorus_abi_version != nullptr) {
    TORCH_CHECK(path == api_path, "chorus: the native backend is bound to ", api_path, ", not ", path);
    return;
  }
  // The Python package loaded this file already: dlopen returns that instance.
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(h != nullptr, "chorus: cannot load ", path, ": ", dlerror());
  Api a;
#define CHORUS_API_LOAD(name)                                                                 \
  a.name = reinterpret_cast<decltype(&::name)>(dlsym(h, #name));                              \
  TORCH_CHECK(a.name != nullptr, "chorus: ", path, " has no symbol " #name " (rebuild chorus)");
  CHORUS_FUNCTIONS(CHORUS_API_LOAD)
#undef CHORUS_API_LOAD
  uint32_t v = a.chorus_abi_version();
  TORCH_CHECK(v == CHORUS_ABI_VERSION, "chorus: ", path, " has C ABI version ", v, " but the native backend was built for ",
              CHORUS_ABI_VERSION, " (reinstall chorus)");
  api = a;
  api_path = path;
}

// An error reported by the chorus library: its status code and message. Python sees it as the
// chorus.ChorusError subclass for the code (see the translator in the module init).
class ChorusException : public std::runtime_error {
 public:
  ChorusException(int32_t code, const std::string& msg) : std::runtime_error(msg), code(code) {}
  int32_t code;
};

[[noreturn]] void throw_status(int32_t rc) {
  const char* m = api.chorus_last_error();
  throw ChorusException(rc, m != nullptr ? m : "");
}

inline void check(int32_t rc) {
  if (rc != CHORUS_OK) {
    throw_status(rc);
  }
}

// Reads a rank array through a `(handle, out, cap, n)` entry point, growing the array when needed.
template <class H, class F>
std::vector<int64_t> rank_array(F fn, H handle) {
  std::vector<int32_t> buf(64);
  for (;;) {
    size_t n = 0;
    int32_t rc = fn(handle, buf.data(), buf.size(), &n);
    if (rc == CHORUS_OK) {
      return std::vector<int64_t>(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
    }
    if (rc == CHORUS_ERR_INVALID_ARGUMENT && n > buf.size()) {
      buf.resize(n);
      continue;
    }
    throw_status(rc);
  }
}

// ------------------------------------------------------------------------------------------ store

// chorus_store_callbacks_t over a c10d::Store, called from the library's threads (no Python involved
// unless the store itself is implemented in Python, whose trampoline takes the GIL).
struct StoreBridge {
  c10::intrusive_ptr<c10d::Store> store;

  static StoreBridge& of(void* ctx) { return *static_cast<StoreBridge*>(ctx); }

  static int32_t fail(chorus_buf_t* err, const char* what, const std::exception& e) {
    if (err != nullptr) {
      std::string m = std::string("c10d store ") + what + ": " + e.what();
      api.chorus_buf_write(err, reinterpret_cast<const uint8_t*>(m.data()), m.size());
    }
    return -1;
  }

  static void put(chorus_buf_t* out, const std::vector<uint8_t>& v) { api.chorus_buf_write(out, v.data(), v.size()); }

  static int32_t set(void* ctx, const char* key, const uint8_t* value, size_t len, chorus_buf_t* err) {
    try {
      of(ctx).store->set(key, std::vector<uint8_t>(value, value + len));
      return 0;
    } catch (const std::exception& e) {
      return fail(err, "set", e);
    }
  }

  static int32_t get(void* ctx, const char* key, chorus_buf_t* value, chorus_buf_t* err) {
    try {
      auto& s = *of(ctx).store;
      // c10d's get waits for the key; chorus asks "present or not".
      if (!s.check({key})) {
        return 1;
      }
      put(value, s.get(key));
      return 0;
    } catch (const std::exception& e) {
      return fail(err, "get", e);
    }
  }

  // Polls with check() instead of c10d's wait: a TCPStore client holds its connection's lock for the
  // whole of a wait, which would stall every other user of the store in this process (the heartbeats of
  // the process's other chorus groups among them) for as long as a peer is late.
  static int32_t wait(void* ctx, const char* const* keys, size_t nkeys, int64_t timeout_ms, chorus_buf_t* err) {
    std::vector<std::string> ks(keys, keys + nkeys);
    auto& s = *of(ctx).store;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0));
    auto pause = std::chrono::microseconds(200);
    try {
      for (;;) {
        if (s.check(ks)) {
          return 0;
        }
        auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
          return 1;
        }
        std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
        pause = std::min(pause * 2, std::chrono::microseconds(20000));
      }
    } catch (const std::exception& e) {
      return fail(err, "wait", e);
    }
  }

  static int32_t add(void* ctx, const char* key, int64_t delta, int64_t* result, chorus_buf_t* err) {
    try {
      *result = of(ctx).store->add(key, delta);
      return 0;
    } catch (const std::exception& e) {
      return fail(err, "add", e);
    }
  }

  static int32_t compare_set(void* ctx, const char* key, const uint8_t* expected, size_t elen, const uint8_t* desired,
                             size_t dlen, chorus_buf_t* result, chorus_buf_t* err) {
    try {
      auto v = of(ctx).store->compareSet(key, std::vector<uint8_t>(expected, expected + elen),
                                         std::vector<uint8_t>(desired, desired + dlen));
      put(result, v);
      return 0;
    } catch (const std::exception& e) {
      return fail(err, "compare_set", e);
    }
  }

  static int32_t delete_key(void* ctx, const char* key, chorus_buf_t* err) {
    try {
      return of(ctx).store->deleteKey(key) ? 1 : 0;
    } catch (const std::exception& e) {
      return fail(err, "delete_key", e);
    }
  }

  static void release(void* ctx) { delete static_cast<StoreBridge*>(ctx); }

  // Callbacks owning a new bridge; the library calls release exactly once (also on failure).
  static chorus_store_callbacks_t callbacks(c10::intrusive_ptr<c10d::Store> store) {
    chorus_store_callbacks_t cb{};
    cb.ctx = new StoreBridge{std::move(store)};
    cb.set = &StoreBridge::set;
    cb.get = &StoreBridge::get;
    cb.wait = &StoreBridge::wait;
    cb.add = &StoreBridge::add;
    cb.compare_set = &StoreBridge::compare_set;
    cb.delete_key = &StoreBridge::delete_key;
    cb.release = &StoreBridge::release;
    return cb;
  }
};

// ------------------------------------------------------------------------------------------ tensors

int32_t dtype_code(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return CHORUS_DTYPE_FLOAT32;
    case at::kDouble: return CHORUS_DTYPE_FLOAT64;
    case at::kHalf: return CHORUS_DTYPE_FLOAT16;
    case at::kBFloat16: return CHORUS_DTYPE_BFLOAT16;
    case at::kChar: return CHORUS_DTYPE_INT8;
    case at::kByte: return CHORUS_DTYPE_UINT8;
    case at::kShort: return CHORUS_DTYPE_INT16;
    case at::kInt: return CHORUS_DTYPE_INT32;
    case at::kLong: return CHORUS_DTYPE_INT64;
    case at::kBool: return CHORUS_DTYPE_BOOL;
    case at::kUInt16: return CHORUS_DTYPE_UINT16;
    case at::kUInt32: return CHORUS_DTYPE_UINT32;
    case at::kUInt64: return CHORUS_DTYPE_UINT64;
    case at::kFloat8_e4m3fn: return CHORUS_DTYPE_FLOAT8_E4M3FN;
    case at::kFloat8_e5m2: return CHORUS_DTYPE_FLOAT8_E5M2;
    default: TORCH_CHECK_TYPE(false, "chorus ", op, ": unsupported tensor dtype ", t.scalar_type());
  }
}

int32_t op_code(const c10d::ReduceOp& r, const char* op) {
  switch (r.op_) {
    case c10d::ReduceOp::SUM: return CHORUS_OP_SUM;
    case c10d::ReduceOp::PRODUCT: return CHORUS_OP_PROD;
    case c10d::ReduceOp::MIN: return CHORUS_OP_MIN;
    case c10d::ReduceOp::MAX: return CHORUS_OP_MAX;
    case c10d::ReduceOp::AVG: return CHORUS_OP_AVG;
    case c10d::ReduceOp::BAND: return CHORUS_OP_BAND;
    case c10d::ReduceOp::BOR: return CHORUS_OP_BOR;
    case c10d::ReduceOp::BXOR: return CHORUS_OP_BXOR;
    case c10d::ReduceOp::PREMUL_SUM:
      TORCH_CHECK_VALUE(false, "chorus ", op, ": ReduceOp.PREMUL_SUM is not supported; scale the tensor and use ReduceOp.SUM");
    default: TORCH_CHECK_VALUE(false, "chorus ", op, ": unsupported reduce op ", static_cast<int>(r.op_));
  }
}

// Where a call's tensors live: CHORUS_DEVICE_CPU, or a CUDA ordinal with its current stream.
struct Place {
  int32_t device = CHORUS_DEVICE_CPU;
  void* stream = nullptr;
  std::optional<c10::Stream> cuda_stream;
  bool cuda() const { return device != CHORUS_DEVICE_CPU; }
};

Place place_of(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "chorus ", op, ": only dense (strided) tensors are supported, not ", t.layout());
  if (t.is_cpu()) {
    return Place{};
  }
  TORCH_CHECK_VALUE(t.is_cuda(), "chorus ", op, ": tensors on ", t.device(), " are not supported (cpu and cuda only)");
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  c10::Stream s = impl->getStream(t.device());
  return Place{static_cast<int32_t>(t.device().index()), s.native_handle(), s};
}

// Whether `s` is capturing a CUDA graph, where torch's device-guard interface can tell (newer torch);
// elsewhere the library's own CUDA calls report the failure.
template <class Impl>
auto stream_capturing(const Impl* impl, const c10::Stream& s, int) -> decltype(impl->isStreamCapturing(s)) {
  return impl->isStreamCapturing(s);
}
template <class Impl>
bool stream_capturing(const Impl*, const c10::Stream&, long) {
  return false;
}

// ------------------------------------------------------------------------------------------ work

class ChorusWork;

// Completes the futures of works still running (getFuture on an unfinished operation): one thread per
// backend, started on first use, waiting for each work in turn.
class FutureCompleter {
 public:
  ~FutureCompleter() { stop(); }
  void enqueue(c10::intrusive_ptr<ChorusWork> w);
  void stop();

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<c10::intrusive_ptr<ChorusWork>> q_;
  bool stopping_ = false;
  std::thread thread_;
};

class ChorusWork : public c10d::Work {
 public:
  ChorusWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs, Place place,
             std::shared_ptr<FutureCompleter> completer)
      : c10d::Work(rank, type, title), outputs_(std::move(outputs)), place_(std::move(place)), completer_(std::move(completer)) {}

  ~ChorusWork() override {
    // A work dropped unwaited: its operations still write the kept tensors until they complete.
    for (auto* h : handles_) {
      api.chorus_work_wait(h, -1);
      api.chorus_work_free(h);
    }
  }

  // The building side (the backend, before the work is returned).
  void add_handle(chorus_work_t* h) { handles_.push_back(h); }
  void keep(at::Tensor t) { keep_.push_back(std::move(t)); }
  void then(std::function<void()> f) { finishers_.push_back(std::move(f)); }
  bool pending() const { return !handles_.empty(); }

  // Marks a work whose operations already ran (blocking or stream-ordered): runs the finishers now.
  void complete_now() {
    run_finishers();
    keep_.clear();
    end_profiling();
    std::lock_guard<std::mutex> lk(mutex_);
    completed_ = true;
  }

  bool isCompleted() override {
    {
      std::lock_guard<std::mutex> lk(mutex_);
      if (completed_) {
        return place_.cuda() ? stream_done() : true;
      }
    }
    for (auto* h : handles_) {
      if (api.chorus_work_is_completed(h) != 1) {
        return false;
      }
    }
    try {
      drive(-1);
    } catch (const std::exception&) {
    }
    return true;
  }

  bool isSuccess() const override {
    std::lock_guard<std::mutex> lk(mutex_);
    return completed_ && !exception_;
  }

  std::exception_ptr exception() const override {
    std::lock_guard<std::mutex> lk(mutex_);
    return exception_;
  }

  std::vector<at::Tensor> result() override { return outputs_; }

  bool wait(std::chrono::milliseconds timeout) override {
    drive(timeout == kNoTimeout ? -1 : static_cast<int64_t>(timeout.count()));
    synchronize();
    return true;
  }

  // CUDA: the caller's current stream waits for the stream the operation was enqueued on.
  void synchronize() override {
    if (!place_.cuda()) {
      return;
    }
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    c10::Stream cur = impl->getStream(place_.cuda_stream->device());
    if (cur != *place_.cuda_stream) {
      c10::Event ev(c10::DeviceType::CUDA);
      ev.record(*place_.cuda_stream);
      ev.block(cur);
    }
  }

  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override {
    std::unique_lock<std::mutex> lk(future_mu_);
    if (!future_) {
      std::vector<c10::Device> devices;
      if (place_.cuda()) {
        devices.push_back(place_.cuda_stream->device());
      }
      future_ = c10::make_intrusive<c10::ivalue::Future>(c10::ListType::create(c10::TensorType::get()), devices);
      bool done;
      {
        std::lock_guard<std::mutex> g(mutex_);
        done = completed_;
      }
      lk.unlock();
      if (done) {
        complete_future();
      } else {
        completer_->enqueue(c10::intrusive_ptr<ChorusWork>::reclaim_copy(this));
      }
      lk.lock();
    }
    return future_;
  }

  // Waits for the operations (timeout_ms < 0: no limit beyond the operations' own deadlines) and
  // finishes the work: copies back, records the failure report, keeps the first error. Rethrows it.
  void drive(int64_t timeout_ms) {
    std::lock_guard<std::mutex> dl(drive_mu_);
    {
      std::lock_guard<std::mutex> lk(mutex_);
      if (completed_) {
        if (exception_) {
          std::rethrow_exception(exception_);
        }
        return;
      }
    }
    std::exception_ptr err;
    for (auto* h : handles_) {
      int32_t rc = api.chorus_work_wait(h, err ? -1 : timeout_ms);
      if (rc == CHORUS_ERR_TIMEOUT && api.chorus_work_is_completed(h) == 0) {
        // Still running: the caller may wait again (nothing is freed).
        throw ChorusException(rc, api.chorus_last_error());
      }
      if (rc != CHORUS_OK) {
        if (!err) {
          err = std::make_exception_ptr(ChorusException(rc, api.chorus_last_error()));
        }
      }
      // The handle stays until the work is dropped: the failure report is read from it on request.
    }
    if (!err) {
      try {
        run_finishers();
      } catch (...) {
        err = std::current_exception();
      }
    }
    keep_.clear();
    end_profiling();
    {
      std::lock_guard<std::mutex> lk(mutex_);
      completed_ = true;
      exception_ = err;
    }
    cv_.notify_all();
    if (err) {
      std::rethrow_exception(err);
    }
  }

  void complete_future() {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> lk(mutex_);
      e = exception_;
    }
    if (e) {
      future_->setError(e);
    } else {
      future_->markCompleted(c10::IValue(outputs_));
    }
  }

  // Keeps the report of an operation that just ran in the blocking form (CUDA tensors: stream-ordered),
  // read from the calling thread's chorus_last_op_*, so that the fault-tolerance functions see it as
  // they see a handle's. Only for works the caller receives (async_op=True).
  void note_blocking_report() {
    auto last = [](auto fn) {
      return rank_array([fn](std::nullptr_t, int32_t* out, size_t cap, size_t* n) { return fn(out, cap, n); }, nullptr);
    };
    std::lock_guard<std::mutex> dl(drive_mu_);
    for (auto r : last(api.chorus_last_op_failed_ranks)) {
      blocking_failed_.insert(r);
    }
    blocking_contributors_ = last(api.chorus_last_op_contributors);
    uint64_t e = 0;
    if (api.chorus_last_op_epoch(&e) == CHORUS_OK) {
      blocking_epoch_ = std::max(blocking_epoch_, e);
    }
  }

  // Failure report of the finished work: ranks that failed (over all its operations), the ranks in the
  // result (its last operation's), and the membership epoch.
  std::tuple<std::vector<int64_t>, std::vector<int64_t>, uint64_t> info() {
    std::lock_guard<std::mutex> dl(drive_mu_);
    std::set<int64_t> failed = blocking_failed_;
    std::vector<int64_t> contributors = blocking_contributors_;
    uint64_t epoch = blocking_epoch_;
    for (auto* h : handles_) {
      try {
        for (auto r : rank_array(api.chorus_work_failed_ranks, h)) {
          failed.insert(r);
        }
        contributors = rank_array(api.chorus_work_contributors, h);
        uint64_t e = 0;
        if (api.chorus_work_epoch(h, &e) == CHORUS_OK) {
          epoch = std::max(epoch, e);
        }
      } catch (const ChorusException&) {
        // An operation that failed before it ran has no report.
      }
    }
    return {std::vector<int64_t>(failed.begin(), failed.end()), contributors, epoch};
  }

 private:
  bool stream_done() const {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    return impl->queryStream(*place_.cuda_stream);
  }

  // The profiler's record of the operation (c10d::Work starts it when a profiler is active).
  void end_profiling() {
    if (recordFunctionEndCallback_) {
      recordFunctionEndCallback_();
      recordFunctionEndCallback_ = nullptr;
    }
  }

  void run_finishers() {
    auto fs = std::move(finishers_);
    finishers_.clear();
    for (auto& f : fs) {
      f();
    }
  }

  std::vector<at::Tensor> outputs_;
  Place place_;
  std::shared_ptr<FutureCompleter> completer_;
  std::vector<chorus_work_t*> handles_;
  std::vector<at::Tensor> keep_;
  std::vector<std::function<void()>> finishers_;
  std::mutex drive_mu_;
  std::set<int64_t> blocking_failed_;  // the blocking operations' reports (note_blocking_report)
  std::vector<int64_t> blocking_contributors_;
  uint64_t blocking_epoch_ = 0;
  std::mutex future_mu_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
};

void FutureCompleter::enqueue(c10::intrusive_ptr<ChorusWork> w) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!thread_.joinable() && !stopping_) {
    thread_ = std::thread([this] { loop(); });
  }
  q_.push_back(std::move(w));
  cv_.notify_one();
}

void FutureCompleter::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) {
    thread_.join();
  }
}

void FutureCompleter::loop() {
  for (;;) {
    c10::intrusive_ptr<ChorusWork> w;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !q_.empty(); });
      if (q_.empty()) {
        return;  // stopping, and every queued work was completed
      }
      w = std::move(q_.front());
      q_.pop_front();
    }
    try {
      w->drive(-1);
    } catch (...) {
    }
    try {
      w->complete_future();
    } catch (...) {
    }
  }
}

// ------------------------------------------------------------------------------------------ backend

// The store of the group destroyed last in this process, kept until the next group is created
// (issue 25). Under init_method="env://" rank 0's TCPStore hosts the job's store server on
// MASTER_PORT, and destroy_process_group drops it; ranks that re-initialise a moment sooner may
// already have connected to that server, which then closes under them: init_process_group hung
// until its timeout or failed. Kept alive, the old server is the one rank 0's next TCPStore joins
// (env:// stores are multi-tenant), so every rank meets the same store. Only ever replaced, never
// freed at exit: torch objects torn down by static destructors can abort the process.
class HeldStore {
 public:
  static void hold(c10::intrusive_ptr<c10d::Store> store) { swap_in(std::move(store)); }
  static void release() { swap_in({}); }

 private:
  static void swap_in(c10::intrusive_ptr<c10d::Store> store) {
    static auto* mu = new std::mutex();
    static auto* held = new c10::intrusive_ptr<c10d::Store>();
    {
      std::lock_guard<std::mutex> lock(*mu);
      std::swap(*held, store);
    }
    // `store` now holds the previous one: dropped here, outside the lock.
  }
};

class ChorusBackend : public c10d::Backend {
 public:
  ChorusBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, int64_t timeout_ms,
                const std::string& name, bool join, bool cuda_host_path)
      : c10d::Backend(rank, size),
        cuda_host_path_(cuda_host_path),
        options_(c10::make_intrusive<c10d::Backend::Options>("chorus", std::chrono::milliseconds(timeout_ms > 0 ? timeout_ms : 300000))),
        completer_(std::make_shared<FutureCompleter>()) {
    TORCH_CHECK(api.chorus_abi_version != nullptr, "chorus: the native backend was not initialized");
    chorus_store_callbacks_t cb = StoreBridge::callbacks(store);
    chorus_group_t* g = nullptr;
    auto create = join ? api.chorus_group_join : api.chorus_group_create;
    int32_t rc = create(&cb, rank, size, name.c_str(), timeout_ms, &g);
    check(rc);
    g_.store(g);
    store_ = store;
    // The new group met its peers: a store kept from an earlier incarnation has served its purpose.
    HeldStore::release();
  }

  ~ChorusBackend() override { destroy(); }

  const std::string getBackendName() const override { return "chorus"; }

  // torch's split_group (and new_group under a device-bound default group) makes a child over a subset
  // of this group's ranks: a new chorus group of the members, over the store torch hands it. Settings
  // (failure policy, heartbeats) come from the environment at the child's creation.
  bool supportsSplitting() const override { return true; }

  c10::intrusive_ptr<c10d::Backend> split(const c10::intrusive_ptr<c10d::Store>& store, const std::vector<int>& ranks,
                                          const c10::intrusive_ptr<c10d::Backend::Options>& opts) override {
    auto me = std::find(ranks.begin(), ranks.end(), getRank());
    if (me == ranks.end()) {
      return nullptr;  // not a member: torch expects no backend
    }
    int64_t ms = opts ? static_cast<int64_t>(opts->timeout.count()) : options_->timeout.count();
    std::optional<py::gil_scoped_release> nogil;  // the rendezvous waits for the other members
    if (PyGILState_Check()) {
      nogil.emplace();
    }
    return c10::make_intrusive<ChorusBackend>(store, static_cast<int>(me - ranks.begin()), static_cast<int>(ranks.size()), ms, "torch",
                                              false, cuda_host_path_);
  }

  c10::intrusive_ptr<c10d::Backend::Options> getBackendOptions() override { return options_; }

  uint64_t getSequenceNumberForGroup() override {
    uint64_t v = 0;
    check(api.chorus_group_ops_completed(group(), &v));
    return v;
  }

  void setSequenceNumberForGroup() override {}

  // Waits for outstanding asynchronous works (bounded by their deadlines), then destroys the group.
  void shutdown() override {
    completer_->stop();
    destroy();
  }

  void abort() override { destroy(); }

  // ---------------------------------------------------------------- fault tolerance
  std::vector<int64_t> active_ranks() { return rank_array(api.chorus_group_active_ranks, group()); }

  uint64_t current_epoch() {
    uint64_t v = 0;
    check(api.chorus_group_epoch(group(), &v));
    return v;
  }

  std::string replica_address() {
    std::string buf(128, '\0');
    for (;;) {
      size_t n = 0;
      int32_t rc = api.chorus_group_replica_address(group(), buf.data(), buf.size(), &n);
      if (rc == CHORUS_OK) {
        buf.resize(n);
        return buf;
      }
      if (rc == CHORUS_ERR_INVALID_ARGUMENT && n > buf.size()) {
        buf.resize(n);
        continue;
      }
      throw_status(rc);
    }
  }

  uint64_t ops_completed() { return getSequenceNumberForGroup(); }

  void mark(uint64_t value) { check(api.chorus_group_mark(group(), value)); }

  // (marker, done); done is 0 when this rank did not join or nothing was marked.
  std::pair<uint64_t, uint64_t> resume_point() {
    uint64_t marker = 0, done = 0;
    check(api.chorus_group_resume_point(group(), &marker, &done));
    return {marker, done};
  }

  void check_device(int64_t device) { check(api.chorus_group_device_status(group(), static_cast<int32_t>(device))); }

  void change_ranks(const std::vector<int64_t>& ranks, bool activate) {
    std::vector<int32_t> rs(ranks.begin(), ranks.end());
    auto fn = activate ? api.chorus_group_activate_ranks : api.chorus_group_deactivate_ranks;
    check(fn(group(), rs.data(), rs.size()));
  }

  uintptr_t handle() { return reinterpret_cast<uintptr_t>(group()); }

  // ---------------------------------------------------------------- collectives
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) override {
    return in_place_each("all_reduce", c10d::OpType::ALLREDUCE, tensors, CHORUS_ASYNC_OP(opts),
                         [&](const at::Tensor& b, int32_t dt, const Place& p, chorus_work_t** w) {
                           return api.chorus_all_reduce(group(), b.data_ptr(), b.numel(), dt, op_code(opts.reduceOp, "all_reduce"),
                                                        p.device, p.stream, w);
                         });
  }

  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(std::vector<at::Tensor>& tensors,
                                                     const c10d::AllreduceCoalescedOptions& opts) override {
    return in_place_each("all_reduce_coalesced", c10d::OpType::ALLREDUCE_COALESCED, tensors, CHORUS_ASYNC_OP(opts),
                         [&](const at::Tensor& b, int32_t dt, const Place& p, chorus_work_t** w) {
                           return api.chorus_all_reduce(group(), b.data_ptr(), b.numel(), dt,
                                                        op_code(opts.reduceOp, "all_reduce_coalesced"), p.device, p.stream, w);
                         });
  }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& opts) override {
    int32_t root = static_cast<int32_t>(opts.rootRank);
    return in_place_each("broadcast", c10d::OpType::BROADCAST, tensors, CHORUS_ASYNC_OP(opts),
                         [&](const at::Tensor& b, int32_t dt, const Place& p, chorus_work_t** w) {
                           return api.chorus_broadcast(group(), b.data_ptr(), b.numel(), dt, root, p.device, p.stream, w);
                         });
  }

  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors, const c10d::ReduceOptions& opts) override {
    one("reduce", tensors, "tensors");
    int32_t root = static_cast<int32_t>(opts.rootRank);
    int32_t op = op_code(opts.reduceOp, "reduce");
    return in_place_each("reduce", c10d::OpType::REDUCE, tensors, CHORUS_ASYNC_OP(opts),
                         [&](const at::Tensor& b, int32_t dt, const Place& p, chorus_work_t** w) {
                           return api.chorus_reduce(group(), b.data_ptr(), b.numel(), dt, op, root, p.device, p.stream, w);
                         });
  }

  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& out, at::Tensor& in, const c10d::AllgatherOptions& opts) override {
    return gather_into("all_gather_into_tensor", c10d::OpType::_ALLGATHER_BASE, {out}, {in}, CHORUS_ASYNC_OP(opts));
  }

  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
                                                                 const c10d::AllgatherOptions& opts) override {
    return gather_into("all_gather_into_tensor_coalesced", c10d::OpType::COALESCED, outs, ins,
                       CHORUS_ASYNC_OP(opts));
  }

  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override {
    const char* name = "all_gather";
    one(name, inputs, "input_tensors");
    one(name, outputs, "output_tensors");
    return gather_lists(name, c10d::OpType::ALLGATHER, outputs, inputs, CHORUS_ASYNC_OP(opts), "tensor_list");
  }

  c10::intrusive_ptr<c10d::Work> allgather_coalesced(std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
                                                     const c10d::AllgatherOptions& opts) override {
    const char* name = "all_gather_coalesced";
    TORCH_CHECK_VALUE(!inputs.empty() && outputs.size() == inputs.size(), "chorus ", name, ": ", outputs.size(),
                      " output lists for ", inputs.size(), " inputs");
    return gather_lists(name, c10d::OpType::ALLGATHER_COALESCED, outputs, inputs, CHORUS_ASYNC_OP(opts), "output list");
  }

  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& out, at::Tensor& in, const c10d::ReduceScatterOptions& opts) override {
    return scatter_from("reduce_scatter_tensor", c10d::OpType::_REDUCE_SCATTER_BASE, {out}, {in}, opts);
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
                                                                 const c10d::ReduceScatterOptions& opts) override {
    return scatter_from("reduce_scatter_tensor_coalesced", c10d::OpType::COALESCED, outs, ins, opts);
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs, std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override {
    const char* name = "reduce_scatter";
    auto& out = one(name, outputs, "output_tensors");
    auto& ins = one(name, inputs, "input_tensors");
    check_list(name, ins, out, "input_list", out.numel());
    Call c(*this, name, c10d::OpType::REDUCE_SCATTER, out, CHORUS_ASYNC_OP(opts), {out});
    int32_t op = op_code(opts.reduceOp, name);
    auto flat = cat_flat(ins);
    c.keep(flat);
    auto dst = c.output(out);
    c.issue([&](chorus_work_t** w) {
      return api.chorus_reduce_scatter(group(), flat.data_ptr(), dst.data_ptr(), dst.numel(), c.dt, op, c.place.device, c.place.stream, w);
    });
    return c.finish();
  }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& out, at::Tensor& in, std::vector<int64_t>& out_splits,
                                               std::vector<int64_t>& in_splits, const c10d::AllToAllOptions& opts) override {
    const char* name = "all_to_all_single";
    TORCH_CHECK_VALUE(out.scalar_type() == in.scalar_type(), "chorus ", name, ": output dtype ", out.scalar_type(),
                      " differs from input dtype ", in.scalar_type());
    Call c(*this, name, c10d::OpType::ALLTOALL_BASE, in, CHORUS_ASYNC_OP(opts), {out});
    c.same(out, "output");
    auto src = c.input(in);
    auto dst = c.output(out);
    int n = getSize();
    if (out_splits.empty() && in_splits.empty()) {
      TORCH_CHECK_VALUE(in.numel() == out.numel() && in.numel() % n == 0, "chorus ", name, ": input (", in.numel(), ") and output (",
                        out.numel(), ") must have equal element counts divisible by the group size ", n);
      uint64_t count = in.numel() / n;
      c.issue([&](chorus_work_t** w) {
        return api.chorus_all_to_all(group(), src.data_ptr(), dst.data_ptr(), count, c.dt, c.place.device, c.place.stream, w);
      });
      return c.finish();
    }
    auto sc = split_counts(name, "input", in, in_splits);
    auto rc = split_counts(name, "output", out, out_splits);
    c.issue([&](chorus_work_t** w) {
      return api.chorus_all_to_all_v(group(), src.data_ptr(), sc.data(), dst.data_ptr(), rc.data(), c.dt, c.place.device,
                                     c.place.stream, w);
    });
    return c.finish();
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
                                          const c10d::AllToAllOptions& opts) override {
    const char* name = "all_to_all";
    check_len(name, outs, "output_tensor_list");
    check_len(name, ins, "input_tensor_list");
    Call c(*this, name, c10d::OpType::ALLTOALL, ins[0], CHORUS_ASYNC_OP(opts), outs);
    for (auto& t : ins) c.same(t, "input_tensor_list entry");
    for (auto& t : outs) c.same(t, "output_tensor_list entry");
    auto sin = cat_flat(ins);
    std::vector<uint64_t> sc, rc;
    int64_t total = 0;
    for (auto& t : ins) sc.push_back(static_cast<uint64_t>(t.numel()));
    for (auto& t : outs) {
      rc.push_back(static_cast<uint64_t>(t.numel()));
      total += t.numel();
    }
    auto sout = at::empty({total}, ins[0].options());
    c.keep(sin);
    c.keep(sout);
    c.issue([&](chorus_work_t** w) {
      return api.chorus_all_to_all_v(group(), sin.data_ptr(), sc.data(), sout.data_ptr(), rc.data(), c.dt, c.place.device,
                                     c.place.stream, w);
    });
    c.then([sout, outs]() mutable {
      int64_t off = 0;
      for (auto& t : outs) {
        t.copy_(sout.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    });
    return c.finish();
  }

  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
                                        const c10d::GatherOptions& opts) override {
    const char* name = "gather";
    int32_t root = static_cast<int32_t>(opts.rootRank);
    auto& in = one(name, inputs, "input_tensors");
    bool is_root = root == getRank();
    std::vector<at::Tensor> outs;
    if (is_root) {
      outs = one(name, outputs, "output_tensors");
      check_list(name, outs, in, "gather_list", in.numel());
    } else {
      for (auto& o : outputs) TORCH_CHECK_VALUE(o.empty(), "chorus ", name, ": gather_list must be empty on non-destination ranks");
    }
    Call c(*this, name, c10d::OpType::GATHER, in, CHORUS_ASYNC_OP(opts), outs);
    auto src = c.input(in);
    at::Tensor flat;
    if (is_root) {
      flat = at::empty({in.numel() * getSize()}, in.options());
      c.keep(flat);
      c.then([flat, outs, n = in.numel()]() mutable { split_into(flat, outs, n); });
    }
    c.issue([&](chorus_work_t** w) {
      return api.chorus_gather(group(), src.data_ptr(), is_root ? flat.data_ptr() : nullptr, src.numel(), c.dt, root, c.place.device,
                               c.place.stream, w);
    });
    return c.finish();
  }

#if CHORUS_HAS_GATHER_SINGLE
  // dist.gather_single: the root receives every rank's tensor in one flat output (others pass none).
  c10::intrusive_ptr<c10d::Work> gather_into_tensor(at::Tensor& out, at::Tensor& in, const c10d::GatherOptions& opts) override {
    const char* name = "gather_single";
    int32_t root = static_cast<int32_t>(opts.rootRank);
    bool is_root = root == getRank();
    Call c(*this, name, c10d::OpType::GATHER, in, CHORUS_ASYNC_OP(opts), is_root ? std::vector<at::Tensor>{out} : std::vector<at::Tensor>{});
    auto src = c.input(in);
    at::Tensor dst;
    if (is_root) {
      c.same(out, "output");
      TORCH_CHECK_VALUE(out.numel() == in.numel() * getSize(), "chorus ", name, ": output has ", out.numel(),
                        " elements but must have ", getSize(), " x ", in.numel(), " (group size x input)");
      dst = c.output(out);
    }
    c.issue([&](chorus_work_t** w) {
      return api.chorus_gather(group(), src.data_ptr(), is_root ? dst.data_ptr() : nullptr, src.numel(), c.dt, root, c.place.device,
                               c.place.stream, w);
    });
    return c.finish();
  }
#endif

  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs, std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override {
    const char* name = "scatter";
    int32_t root = static_cast<int32_t>(opts.rootRank);
    auto& out = one(name, outputs, "output_tensors");
    bool is_root = root == getRank();
    Call c(*this, name, c10d::OpType::SCATTER, out, CHORUS_ASYNC_OP(opts), {out});
    at::Tensor flat;
    if (is_root) {
      auto& ins = one(name, inputs, "input_tensors");
      check_list(name, ins, out, "scatter_list", out.numel());
      flat = cat_flat(ins);
      c.keep(flat);
    } else {
      for (auto& i : inputs) TORCH_CHECK_VALUE(i.empty(), "chorus ", name, ": scatter_list must be empty on non-source ranks");
    }
    auto dst = c.output(out);
    c.issue([&](chorus_work_t** w) {
      return api.chorus_scatter(group(), is_root ? flat.data_ptr() : nullptr, dst.data_ptr(), dst.numel(), c.dt, root, c.place.device,
                                c.place.stream, w);
    });
    return c.finish();
  }

  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override {
    auto w = c10::make_intrusive<ChorusWork>(getRank(), c10d::OpType::BARRIER, "chorus:barrier", std::vector<at::Tensor>{}, Place{},
                                             completer_);
    if (CHORUS_ASYNC_OP(opts)) {
      chorus_work_t* h = nullptr;
      check(api.chorus_barrier(group(), &h));
      w->add_handle(h);
    } else {
      check(api.chorus_barrier(group(), nullptr));
      w->complete_now();
    }
    return w;
  }

  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst, int tag) override {
    return p2p("send", c10d::OpType::SEND, tensors, dst, tag, false);
  }

  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src, int tag) override {
    return p2p("recv", c10d::OpType::RECV, tensors, src, tag, true);
  }

  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>&, int) override {
    TORCH_CHECK(false, "chorus: recv from any source is not supported; pass src");
  }

 private:
  chorus_group_t* group() const {
    chorus_group_t* g = g_.load(std::memory_order_acquire);
    if (g == nullptr) {
      throw ChorusException(CHORUS_ERR_DESTROYED, "the process group has been destroyed");
    }
    return g;
  }

  void destroy() {
    chorus_group_t* g = g_.exchange(nullptr);
    if (g != nullptr) {
      api.chorus_group_destroy(g);
      HeldStore::hold(std::move(store_));
    }
  }

  // One call's works, tensors and copy-backs; `finish` hands out its Work.
  struct Call {
    Call(ChorusBackend& b, const char* name, c10d::OpType type, const at::Tensor& ref, bool async, std::vector<at::Tensor> outputs)
        : b(b), name(name), ref(ref), dt(dtype_code(ref, name)), place(place_of(ref, name)) {
      check_capture();
      // CUDA operations are stream-ordered and complete from the host's view at once; host memory
      // runs here unless the caller asked for an asynchronous work.
      this->async = async;
      async_host = async && !place.cuda();
      work = c10::make_intrusive<ChorusWork>(b.getRank(), type, name, std::move(outputs), place, b.completer_);
    }

    // Another tensor of the same call: same dtype and device as the first.
    void same(const at::Tensor& t, const char* what) const {
      TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), "chorus ", name, ": ", what, " has dtype ", t.scalar_type(),
                        " but the input has ", ref.scalar_type());
      TORCH_CHECK_VALUE(t.device() == ref.device(), "chorus ", name, ": ", what, " is on ", t.device(), " but the input is on ",
                        ref.device());
    }

    // A contiguous tensor holding `t`'s data for the library to read.
    at::Tensor input(const at::Tensor& t) {
      if (t.is_contiguous()) {
        keep(t);
        return t;
      }
      auto c = t.contiguous();
      keep(c);
      return c;
    }

    // A contiguous tensor the library writes; copied into `t` after success when it is a copy.
    at::Tensor output(const at::Tensor& t) {
      if (t.is_contiguous()) {
        keep(t);
        return t;
      }
      auto c = t.contiguous();
      keep(c);
      then([c, t]() mutable { t.copy_(c); });
      return c;
    }

    // The library uses `t` until the operation completes: host memory stays referenced by the work;
    // for an asynchronous CUDA call the caching allocator learns that the stream uses `t`'s memory, so
    // freeing `t` early cannot hand it to work on another stream (as ProcessGroupNCCL does).
    void keep(const at::Tensor& t) {
      if (async_host) {
        work->keep(t);
      } else if (async && place.cuda() && t.defined()) {
        c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->recordDataPtrOnStream(t.storage().data_ptr(), *place.cuda_stream);
      }
    }

    void then(std::function<void()> f) { work->then(std::move(f)); }

    // Starts one library operation: with a work handle when asynchronous, blocking otherwise.
    template <class F>
    void issue(F&& start) {
      if (!async_host) {
        int32_t rc = start(static_cast<chorus_work_t**>(nullptr));
        if (rc != CHORUS_OK) throw_status(rc);
        if (async) {
          work->note_blocking_report();
        }
        return;
      }
      chorus_work_t* h = nullptr;
      int32_t rc = start(&h);
      if (rc != CHORUS_OK) {
        // Operations already started keep their memory until they finish (the work's destructor).
        throw_status(rc);
      }
      work->add_handle(h);
    }

    c10::intrusive_ptr<c10d::Work> finish() {
      if (!work->pending()) {
        work->complete_now();
      }
      return work;
    }

    // The host path cannot be captured into a CUDA graph: say so before it fails inside CUDA.
    void check_capture() const {
      if (place.cuda() && b.cuda_host_path_) {
        TORCH_CHECK(!stream_capturing(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA), *place.cuda_stream, 0), "chorus ", name,
                    ": CUDA tensors take the host path (cuda_path='host'), which copies through host memory and cannot be "
                    "captured in a CUDA graph; capture with cuda_path='kernels' (the default)");
      }
    }

    ChorusBackend& b;
    const char* name;
    const at::Tensor& ref;
    int32_t dt;
    Place place;
    bool async = false;       // the caller asked for an asynchronous work
    bool async_host = false;  // ... and the operation runs on host memory (queued, finished by wait)
    c10::intrusive_ptr<ChorusWork> work;
  };

  template <class F>
  c10::intrusive_ptr<c10d::Work> in_place_each(const char* name, c10d::OpType type, std::vector<at::Tensor>& tensors, bool async, F start) {
    TORCH_CHECK_VALUE(!tensors.empty(), "chorus ", name, ": no tensors given");
    Call c(*this, name, type, tensors[0], async, tensors);
    for (auto& t : tensors) {
      c.same(t, "tensor");
      auto b = c.output(t);
      c.issue([&](chorus_work_t** w) { return start(b, c.dt, c.place, w); });
    }
    return c.finish();
  }

  // All-gathers into lists: input i of every rank lands in output list i (one tensor per rank), through a
  // flat buffer split into the list once the operation completed.
  c10::intrusive_ptr<c10d::Work> gather_lists(const char* name, c10d::OpType type, std::vector<std::vector<at::Tensor>>& outputs,
                                              std::vector<at::Tensor>& inputs, bool async, const char* what) {
    Call c(*this, name, type, inputs[0], async, flat_outputs(outputs));
    for (size_t i = 0; i < inputs.size(); i++) {
      auto& in = inputs[i];
      auto& outs = outputs[i];
      check_list(name, outs, in, what, in.numel());
      c.same(in, "input");
      auto src = c.input(in);
      auto flat = at::empty({in.numel() * getSize()}, in.options());
      c.keep(flat);
      c.issue([&](chorus_work_t** w) {
        return api.chorus_all_gather(group(), src.data_ptr(), flat.data_ptr(), src.numel(), c.dt, c.place.device, c.place.stream, w);
      });
      c.then([flat, outs, n = in.numel()]() mutable { split_into(flat, outs, n); });
    }
    return c.finish();
  }

  // Calls of one input and one output tensor per entry (single and coalesced forms): `start(c, in, out)`
  // checks the sizes and issues the operation.
  template <class F>
  c10::intrusive_ptr<c10d::Work> each_pair(const char* name, c10d::OpType type, std::vector<at::Tensor> outs,
                                           std::vector<at::Tensor> ins, bool async, F start) {
    TORCH_CHECK_VALUE(!ins.empty() && outs.size() == ins.size(), "chorus ", name, ": ", outs.size(), " outputs for ", ins.size(),
                      " inputs");
    Call c(*this, name, type, ins[0], async, outs);
    for (size_t i = 0; i < ins.size(); i++) {
      c.same(ins[i], "input");
      c.same(outs[i], "output");
      start(c, ins[i], outs[i]);
    }
    return c.finish();
  }

  c10::intrusive_ptr<c10d::Work> gather_into(const char* name, c10d::OpType type, std::vector<at::Tensor> outs,
                                             std::vector<at::Tensor> ins, bool async) {
    return each_pair(name, type, std::move(outs), std::move(ins), async, [&](Call& c, const at::Tensor& in, const at::Tensor& out) {
      TORCH_CHECK_VALUE(out.numel() == in.numel() * getSize(), "chorus ", name, ": output has ", out.numel(),
                        " elements but must have ", getSize(), " x ", in.numel(), " (group size x input)");
      auto dst = c.output(out);
      auto src = c.input(in);
      c.issue([&](chorus_work_t** w) {
        return api.chorus_all_gather(group(), src.data_ptr(), dst.data_ptr(), src.numel(), c.dt, c.place.device, c.place.stream, w);
      });
    });
  }

  c10::intrusive_ptr<c10d::Work> scatter_from(const char* name, c10d::OpType type, std::vector<at::Tensor> outs,
                                              std::vector<at::Tensor> ins, const c10d::ReduceScatterOptions& opts) {
    int32_t op = op_code(opts.reduceOp, name);
    return each_pair(name, type, std::move(outs), std::move(ins), CHORUS_ASYNC_OP(opts), [&](Call& c, const at::Tensor& in, const at::Tensor& out) {
      TORCH_CHECK_VALUE(in.numel() == out.numel() * getSize(), "chorus ", name, ": input has ", in.numel(),
                        " elements but must have ", getSize(), " x ", out.numel(), " (group size x output)");
      auto src = c.input(in);
      auto dst = c.output(out);
      c.issue([&](chorus_work_t** w) {
        return api.chorus_reduce_scatter(group(), src.data_ptr(), dst.data_ptr(), dst.numel(), c.dt, op, c.place.device, c.place.stream, w);
      });
    });
  }

  // Point-to-point calls carry no asyncOp: they are queued, and a wait right after runs them here.
  c10::intrusive_ptr<c10d::Work> p2p(const char* name, c10d::OpType type, std::vector<at::Tensor>& tensors, int peer, int tag,
                                     bool is_recv) {
    auto& t = one(name, tensors, "tensors");
    Call c(*this, name, type, t, true, {t});
    auto b = is_recv ? c.output(t) : c.input(t);
    uint64_t utag = static_cast<uint64_t>(static_cast<int64_t>(tag));
    c.issue([&](chorus_work_t** w) {
      return is_recv ? api.chorus_recv(group(), b.data_ptr(), b.numel(), c.dt, peer, utag, c.place.device, c.place.stream, w)
                     : api.chorus_send(group(), b.data_ptr(), b.numel(), c.dt, peer, utag, c.place.device, c.place.stream, w);
    });
    return c.finish();
  }

  template <class T>
  static T& one(const char* op, std::vector<T>& v, const char* what) {
    TORCH_CHECK_VALUE(v.size() == 1, "chorus ", op, ": expects exactly one entry in ", what, ", got ", v.size());
    return v[0];
  }

  void check_len(const char* op, const std::vector<at::Tensor>& v, const char* what) const {
    TORCH_CHECK_VALUE(static_cast<int>(v.size()) == getSize(), "chorus ", op, ": ", what, " must have ", getSize(),
                      " entries (one per rank of the group), got ", v.size());
  }

  void check_list(const char* op, const std::vector<at::Tensor>& list, const at::Tensor& ref, const char* what, int64_t numel) const {
    check_len(op, list, what);
    for (size_t i = 0; i < list.size(); i++) {
      const auto& t = list[i];
      TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), "chorus ", op, ": ", what, "[", i, "] has dtype ", t.scalar_type(),
                        " but the input has ", ref.scalar_type());
      TORCH_CHECK_VALUE(t.device() == ref.device(), "chorus ", op, ": ", what, "[", i, "] is on ", t.device(), " but the input is on ",
                        ref.device());
      TORCH_CHECK_VALUE(t.numel() == numel, "chorus ", op, ": ", what, "[", i, "] has ", t.numel(), " elements but must have ", numel);
    }
  }

  static std::vector<at::Tensor> flat_outputs(const std::vector<std::vector<at::Tensor>>& lists) {
    std::vector<at::Tensor> v;
    for (auto& l : lists) v.insert(v.end(), l.begin(), l.end());
    return v;
  }

  static at::Tensor cat_flat(const std::vector<at::Tensor>& ts) {
    std::vector<at::Tensor> flat;
    flat.reserve(ts.size());
    for (auto& t : ts) flat.push_back(t.reshape({-1}));
    return at::cat(flat);
  }

  static void split_into(const at::Tensor& flat, std::vector<at::Tensor>& outs, int64_t n) {
    for (size_t r = 0; r < outs.size(); r++) {
      outs[r].copy_(flat.narrow(0, static_cast<int64_t>(r) * n, n).view(outs[r].sizes()));
    }
  }

  std::vector<uint64_t> split_counts(const char* op, const char* what, const at::Tensor& t, const std::vector<int64_t>& splits) const {
    int n = getSize();
    int64_t rows = t.dim() > 0 ? t.size(0) : 1;
    int64_t per_row = rows != 0 ? t.numel() / rows : 0;
    std::vector<int64_t> s = splits;
    if (s.empty()) {
      TORCH_CHECK_VALUE(rows % n == 0, "chorus ", op, ": ", what, " dim 0 (", rows, ") is not divisible by the group size ", n,
                        " and no split sizes were given");
      s.assign(n, rows / n);
    }
    TORCH_CHECK_VALUE(static_cast<int>(s.size()) == n, "chorus ", op, ": ", what, "_split_sizes must have ", n,
                      " entries (one per rank), got ", s.size());
    int64_t sum = 0;
    for (auto v : s) {
      TORCH_CHECK_VALUE(v >= 0, "chorus ", op, ": ", what, "_split_sizes must be non-negative");
      sum += v;
    }
    TORCH_CHECK_VALUE(sum == rows, "chorus ", op, ": ", what, "_split_sizes must sum to dim 0 of the ", what, " (", rows, "), got ", sum);
    std::vector<uint64_t> counts;
    counts.reserve(n);
    for (auto v : s) counts.push_back(static_cast<uint64_t>(v * per_row));
    return counts;
  }

  std::atomic<chorus_group_t*> g_{nullptr};
  // Handed to HeldStore when the group is destroyed.
  c10::intrusive_ptr<c10d::Store> store_;
  bool cuda_host_path_;
  c10::intrusive_ptr<c10d::Backend::Options> options_;
  std::shared_ptr<FutureCompleter> completer_;
};

// The chorus work behind a torch Work, or a TypeError.
ChorusWork& as_chorus_work(c10d::Work& w) {
  auto* cw = dynamic_cast<ChorusWork*>(&w);
  TORCH_CHECK_TYPE(cw != nullptr, "chorus: this Work does not come from the chorus backend");
  return *cw;
}

}  // namespace chorus_torch

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace chorus_torch;
  py::module_::import("torch.distributed");
  m.doc() = "chorus: the native torch.distributed backend (c10d::Backend over the chorus C ABI)";
  m.attr("ABI_VERSION") = CHORUS_ABI_VERSION;

  m.def("init", &load_api, py::arg("library_path"), "Binds the backend to the chorus library at `library_path`.");

  // chorus errors reach Python as the chorus.ChorusError subclass for their status code.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ChorusException& e) {
      py::object lib = py::module_::import("chorus._lib");
      py::object cls = lib.attr("_ERROR_CLASSES").attr("get")(e.code, lib.attr("ChorusError"));
      py::object exc = cls(e.code, e.what());
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });

  py::class_<ChorusBackend, c10d::Backend, c10::intrusive_ptr<ChorusBackend>>(m, "ChorusBackend")
      .def(py::init<const c10::intrusive_ptr<c10d::Store>&, int, int, int64_t, const std::string&, bool, bool>(), py::arg("store"),
           py::arg("rank"), py::arg("size"), py::arg("timeout_ms"), py::arg("name"), py::arg("join"), py::arg("cuda_host_path"),
           py::call_guard<py::gil_scoped_release>())
      .def("active_ranks", &ChorusBackend::active_ranks)
      .def("current_epoch", &ChorusBackend::current_epoch)
      .def("replica_address", &ChorusBackend::replica_address)
      .def("ops_completed", &ChorusBackend::ops_completed)
      .def("mark", &ChorusBackend::mark, py::arg("value"))
      .def("resume_point", &ChorusBackend::resume_point)
      .def("check_device", &ChorusBackend::check_device, py::arg("device"))
      .def("deactivate_ranks", [](ChorusBackend& b, const std::vector<int64_t>& r) { b.change_ranks(r, false); })
      .def("activate_ranks", [](ChorusBackend& b, const std::vector<int64_t>& r) { b.change_ranks(r, true); })
      .def("group_handle", &ChorusBackend::handle)
      .def("destroy", &ChorusBackend::abort, "Destroys the chorus group (later calls fail; peers get an error).")
      .def("__repr__", [](ChorusBackend& b) {
        return "chorus native backend (rank " + std::to_string(b.getRank()) + " of " + std::to_string(b.getSize()) + ")";
      });

  m.def("is_chorus_work", [](c10d::Work& w) { return dynamic_cast<ChorusWork*>(&w) != nullptr; });
  m.def(
      "work_info",
      [](c10d::Work& w) {
        auto& cw = as_chorus_work(w);
        {
          py::gil_scoped_release nogil;
          try {
            cw.wait(kNoTimeout);
          } catch (const std::exception&) {
            // A failed operation still says who failed: its error is for wait(), not for this.
          }
        }
        auto [failed, contributors, epoch] = cw.info();
        return py::make_tuple(failed, contributors, epoch);
      },
      "(failed ranks, contributors, epoch) of a chorus Work, after waiting for it.");
}
