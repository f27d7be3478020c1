// Same-padded, stride-1 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers.
//
// Layouts are JAX's: x [N, H, W, Ci] (NHWC), kernel [Kh, Kw, Ci, Co] (HWIO), y [N, H, W, Co];
// float32 only, odd kernel sizes (padding (K - 1) / 2 on each side). Three handlers make one
// convolution and its VJP:
//   unclip_conv_forward          (x, kernel)      -> y
//   unclip_conv_backward_input   (dy, kernel)     -> dx
//   unclip_conv_backward_kernel  (x, dy)          -> dkernel
// Each takes a `threads` attribute: the OpenMP threads oneDNN may use on the calling thread
// (one per core a JAX CPU device owns). Primitives are built once per shape and reused; the
// kernel is reordered into the primitive's blocked layout on every call (it changes each step),
// and scratch memory is the calling thread's own, so devices may run them concurrently.

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One shape of convolution: N, H, W, Ci, Co, Kh, Kw.
using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

struct Descs {
  memory::desc x, y, kernel_hwio, kernel_any;
  memory::dims strides, padding;
};

Descs MakeDescs(const Shape& s) {
  auto [n, h, w, ci, co, kh, kw] = s;
  return Descs{memory::desc({n, ci, h, w}, memory::data_type::f32, Tag::nhwc),
               memory::desc({n, co, h, w}, memory::data_type::f32, Tag::nhwc),
               memory::desc({co, ci, kh, kw}, memory::data_type::f32, Tag::hwio),
               memory::desc({co, ci, kh, kw}, memory::data_type::f32, Tag::any),
               {1, 1},
               {(kh - 1) / 2, (kw - 1) / 2}};
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Descs& d) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.x,
      d.kernel_any, d.y, d.strides, d.padding, d.padding, UserScratchpad());
}

// A primitive with the scratchpad size it asks for.
struct Step {
  dnnl::primitive prim;
  memory::desc scratchpad;
};

template <typename PrimitiveDesc, typename Primitive>
Step MakeStep(const PrimitiveDesc& pd) {
  return Step{Primitive(pd), pd.scratchpad_desc()};
}

Step Reorder(const memory::desc& from, const memory::desc& to) {
  return MakeStep<dnnl::reorder::primitive_desc, dnnl::reorder>(
      dnnl::reorder::primitive_desc(Engine(), from, Engine(), to, UserScratchpad()));
}

// The primitives of one shape and direction, built on first use: the kernel moved between
// HWIO and the layout the convolution picked, then the convolution.
struct Conv {
  Step kernel_move;
  memory::desc kernel_blocked;
  Step conv;
};

Conv MakeForward(const Shape& s) {
  Descs d = MakeDescs(s);
  auto pd = ForwardDesc(d);
  return Conv{Reorder(d.kernel_hwio, pd.weights_desc()), pd.weights_desc(),
              MakeStep<decltype(pd), dnnl::convolution_forward>(pd)};
}

Conv MakeBackwardInput(const Shape& s) {
  Descs d = MakeDescs(s);
  auto pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, d.x, d.kernel_any, d.y, d.strides,
      d.padding, d.padding, ForwardDesc(d), UserScratchpad());
  return Conv{Reorder(d.kernel_hwio, pd.weights_desc()), pd.weights_desc(),
              MakeStep<decltype(pd), dnnl::convolution_backward_data>(pd)};
}

Conv MakeBackwardKernel(const Shape& s) {
  Descs d = MakeDescs(s);
  auto pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, d.x, d.kernel_any, d.y, d.strides,
      d.padding, d.padding, ForwardDesc(d), UserScratchpad());
  return Conv{Reorder(pd.diff_weights_desc(), d.kernel_hwio), pd.diff_weights_desc(),
              MakeStep<decltype(pd), dnnl::convolution_backward_weights>(pd)};
}

// Primitives of every direction, shape and thread count seen, never freed (a program has a few
// dozen shapes). Built for the calling thread's OpenMP thread count, set before.
const Conv& Cached(const Shape& s, Conv (*make)(const Shape&)) {
  static std::mutex mu;
  using Key = std::tuple<Conv (*)(const Shape&), Shape, int>;
  static std::map<Key, std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[Key{make, s, omp_get_max_threads()}];
  if (!slot) slot = std::make_unique<Conv>(make(s));
  return *slot;
}

// Memory owned by the calling thread and grown as needed.
struct ThreadBuffer {
  void* data = nullptr;
  size_t size = 0;
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 4095) / 4096 * 4096;
      data = std::aligned_alloc(64, size);
      if (data == nullptr) {
        size = 0;
        throw std::bad_alloc();
      }
    }
    return data;
  }
  ~ThreadBuffer() { std::free(data); }
};

thread_local ThreadBuffer scratchpad_buffer, kernel_buffer;

// Checks the shapes and returns the convolution's: x [N,H,W,Ci], kernel [Kh,Kw,Ci,Co].
ffi::ErrorOr<Shape> ConvShape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel) {
  if (x.size() != 4 || kernel.size() != 4 || kernel[2] != x[3] || kernel[0] % 2 == 0 ||
      kernel[1] % 2 == 0)
    return ffi::Unexpected(ffi::Error(
        ffi::ErrorCode::kInvalidArgument,
        "expected x [N, H, W, Ci] and an odd-sized kernel [Kh, Kw, Ci, Co]"));
  return Shape{x[0], x[1], x[2], x[3], kernel[3], kernel[0], kernel[1]};
}

// What a handler works with: the primitives of its shape built for `threads` OpenMP threads (set
// first: oneDNN splits its work for the threads it sees when it builds them), the shape's memory
// descriptions, and the kernel in the primitives' layout, in the calling thread's buffer.
struct Call {
  const Conv& conv;
  Descs d;
  memory blocked;
  dnnl::stream stream;

  Call(const Shape& s, int64_t threads, Conv (*make)(const Shape&))
      : conv((omp_set_num_threads(static_cast<int>(threads)), Cached(s, make))),
        d(MakeDescs(s)),
        blocked(conv.kernel_blocked, Engine(), kernel_buffer.Get(conv.kernel_blocked.get_size())),
        stream(Engine()) {}

  memory Hwio(float* data) { return memory(d.kernel_hwio, Engine(), data); }
  memory X(float* data) { return memory(d.x, Engine(), data); }
  memory Y(float* data) { return memory(d.y, Engine(), data); }

  ffi::Error Run(std::initializer_list<std::pair<const Step&, std::unordered_map<int, memory>>>
                     steps) {
    for (const auto& [step, args] : steps) {
      auto with_scratchpad = args;
      with_scratchpad.emplace(DNNL_ARG_SCRATCHPAD,
                              memory(step.scratchpad, Engine(),
                                     scratchpad_buffer.Get(step.scratchpad.get_size())));
      step.prim.execute(stream, with_scratchpad);
    }
    stream.wait();
    return ffi::Error::Success();
  }
};

ffi::Error ConvForwardRun(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                          ffi::ResultBuffer<ffi::F32> y, int64_t threads) {
  auto shape = ConvShape(x.dimensions(), kernel.dimensions());
  if (shape.has_error()) return shape.error();
  Call call(*shape, threads, MakeForward);
  return call.Run({
      {call.conv.kernel_move,
       {{DNNL_ARG_FROM, call.Hwio(kernel.typed_data())}, {DNNL_ARG_TO, call.blocked}}},
      {call.conv.conv,
       {{DNNL_ARG_SRC, call.X(x.typed_data())},
        {DNNL_ARG_WEIGHTS, call.blocked},
        {DNNL_ARG_DST, call.Y(y->typed_data())}}},
  });
}

ffi::Error ConvBackwardInputRun(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                                ffi::ResultBuffer<ffi::F32> dx, int64_t threads) {
  auto shape = ConvShape(dx->dimensions(), kernel.dimensions());
  if (shape.has_error()) return shape.error();
  Call call(*shape, threads, MakeBackwardInput);
  return call.Run({
      {call.conv.kernel_move,
       {{DNNL_ARG_FROM, call.Hwio(kernel.typed_data())}, {DNNL_ARG_TO, call.blocked}}},
      {call.conv.conv,
       {{DNNL_ARG_DIFF_DST, call.Y(dy.typed_data())},
        {DNNL_ARG_WEIGHTS, call.blocked},
        {DNNL_ARG_DIFF_SRC, call.X(dx->typed_data())}}},
  });
}

ffi::Error ConvBackwardKernelRun(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                 ffi::ResultBuffer<ffi::F32> dkernel, int64_t threads) {
  auto shape = ConvShape(x.dimensions(), dkernel->dimensions());
  if (shape.has_error()) return shape.error();
  Call call(*shape, threads, MakeBackwardKernel);
  return call.Run({
      {call.conv.conv,
       {{DNNL_ARG_SRC, call.X(x.typed_data())},
        {DNNL_ARG_DIFF_DST, call.Y(dy.typed_data())},
        {DNNL_ARG_DIFF_WEIGHTS, call.blocked}}},
      {call.conv.kernel_move,
       {{DNNL_ARG_FROM, call.blocked}, {DNNL_ARG_TO, call.Hwio(dkernel->typed_data())}}},
  });
}

// oneDNN reports a failure (a primitive it cannot build, memory) by throwing: XLA gets it as an
// error of the call, not a crash of the process.
template <typename... Args>
ffi::Error Guarded(ffi::Error (*run)(Args...), Args... args) {
  try {
    return run(args...);
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error ConvForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                           ffi::ResultBuffer<ffi::F32> y, int64_t threads) {
  return Guarded(ConvForwardRun, x, kernel, y, threads);
}

ffi::Error ConvBackwardInputImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                                 ffi::ResultBuffer<ffi::F32> dx, int64_t threads) {
  return Guarded(ConvBackwardInputRun, dy, kernel, dx, threads);
}

ffi::Error ConvBackwardKernelImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                  ffi::ResultBuffer<ffi::F32> dkernel, int64_t threads) {
  return Guarded(ConvBackwardKernelRun, x, dy, dkernel, threads);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnclipConvForward, ConvForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnclipConvBackwardInput, ConvBackwardInputImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnclipConvBackwardKernel, ConvBackwardKernelImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
